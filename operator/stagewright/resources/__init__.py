"""Pure builders: ImageBuild (+ settings) -> the Kubernetes objects the operator creates."""
