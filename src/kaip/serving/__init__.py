"""Model serving: KServe's InferenceService on the local executor, with a gateway in the Kaip server."""
