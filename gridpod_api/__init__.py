"""Generated protobuf and gRPC modules for ArmoniK's gRPC API v1.

Every ``*_pb2`` module is produced from ``protos/`` by ``python protos/generate.py``;
do not edit them by hand. Message and service names are ArmoniK's, so the gRPC method
paths are identical (``/armonik.api.grpc.v1.worker.Worker/Process``, ...).
"""
