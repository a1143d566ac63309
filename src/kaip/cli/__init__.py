"""The `kaip` command."""
