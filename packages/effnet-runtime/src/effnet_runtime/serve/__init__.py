"""Serving classifiers without PyTorch: effnet's ``/v1`` API and page, and the Open Inference
Protocol (KServe v2) over HTTP and gRPC, for one model or a repository of versioned models.

The pipeline, one module each, from the command line inwards:

- :mod:`.cli`: ``effnet-serve`` and the arguments ``effnet serve`` shares;
- :mod:`.settings`: options, listening, version policies, the bounds of every number;
- :mod:`.server`: bind the port(s), then load, then run uvicorn (one process or workers);
- :mod:`.app`: the Starlette app, its refusals and lifespan; :mod:`.api_v1` (effnet's API, the
  page, health, metrics), :mod:`.api_v2` (the protocol over HTTP), :mod:`.grpc_service` (over
  gRPC, imported only when a gRPC port is given), :mod:`.uploads` (bodies within the limits);
- :mod:`.protocol`: the protocol's tensors on the wire (JSON, binary data, classification);
- :mod:`.service`: what both front ends share: the API key, decoding, inference;
- :mod:`.repository`: models and versions, hot reload; :mod:`.batching`: dynamic batches;
- :mod:`.predictor`: a model behind one interface (shipped folders here; effnet adds PyTorch);
- :mod:`.metrics`: Prometheus; :mod:`.errors`: refusals.

Install: ``pip install 'effnet-runtime[serve,onnxruntime]'`` (``grpc`` and ``openvino`` extras
as needed). Nothing here imports torch or effnet.
"""
