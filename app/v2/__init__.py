"""The Open Inference Protocol (KServe v2, Triton's clients): ``/v2`` over HTTP and the
``inference.GRPCInferenceService`` over gRPC, both on the same engines as ``/embed``."""
