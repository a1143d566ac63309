"""Workbenches: JupyterLab run by the platform for a namespace (the `kaip.dev/v1alpha1` Workbench kind).

`render` (what pod, what URL, where files live) and `culling` (is it idle?) are pure; `proxy` is the token-checked
HTTP and websocket proxy at `/workbenches/{namespace}/{name}/`; `lab` is what the pod runs; `install` plugs it all
into a server. The reconciler is `kaip.controllers.workbench`.
"""
