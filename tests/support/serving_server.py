"""A small stand-in for tensorflow_model_server, for the tests (a real TF Serving binary cannot be
installed here): serves one SavedModel version through the gRPC PredictionService (Predict) and
the REST API (POST /v1/models/<name>[/versions/<v>]:predict, GET /v1/models/<name>) on loopback.

It loads the model the way TF Serving's C++ server does: a TF1 session over the SavedModel's
MetaGraph (tag "serve"), with its signature_defs' tensor names as feeds and fetches; requests run
through a session callable, which hands the request's tensors to the C++ runtime as they are
(no Python-side shape check or dtype conversion), so the runtime's own errors (a wrong dtype) and
the graph's own checks (shapes, bytes) are what a client sees, with TF Serving's status codes.
It replays assets.extra/tf_serving_warmup_requests on load, as TF Serving does.
"""
import base64
import json
import os
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
_HTTP_STATUS = {3: 400, 5: 404, 9: 400, 11: 400, 12: 501}  # InvalidArgument, NotFound, FailedPrecondition, ...


class ServingError(Exception):
    """An error a request gets: a TF / gRPC status code (int) and a message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class LoadedModel:
    """One SavedModel version in a TF1 session, as the C++ server holds it."""

    def __init__(self, path, name, version):
        self.path, self.name, self.version = path, name, int(version)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        self.signatures = dict(meta_graph.signature_def)
        self._callables = {}
        self._lock = threading.Lock()
        self.warmup_requests = self._warm_up()

    def _callable(self, signature, input_keys, output_keys):
        key = (signature, input_keys, output_keys)
        with self._lock:
            if key not in self._callables:
                sig = self.signatures[signature]
                options = config_pb2.CallableOptions(feed=[sig.inputs[k].name for k in input_keys],
                                                     fetch=[sig.outputs[k].name for k in output_keys])
                self._callables[key] = self.session._make_callable_from_options(options)
            return self._callables[key]

    def predict(self, signature, inputs, output_filter=()):
        """inputs: {name: np.ndarray} -> {output name: np.ndarray}; ServingError as TF Serving
        reports it (unknown signature or input names, runtime errors with their codes)."""
        signature = signature or "serving_default"
        if signature not in self.signatures:
            raise ServingError(5, f"Serving signature name: \"{signature}\" not found in signature def")
        sig = self.signatures[signature]
        expected, given = set(sig.inputs), set(inputs)
        if expected != given:
            raise ServingError(3, f"input size does not match signature: {len(given)}!={len(expected)} "
                                  f"len({sorted(given)}) != len({sorted(expected)}). Sent extra: "
                                  f"{sorted(given - expected)}. Missing but required: {sorted(expected - given)}.")
        outputs = tuple(output_filter) or tuple(sorted(sig.outputs))
        unknown = [k for k in outputs if k not in sig.outputs]
        if unknown:
            raise ServingError(3, f"output tensor alias not found in signature: {unknown[0]}")
        input_keys = tuple(sorted(inputs))
        run = self._callable(signature, input_keys, outputs)
        try:
            values = run(*[inputs[k] for k in input_keys])
        except tf.errors.OpError as e:
            raise ServingError(e.error_code, e.message) from None
        return dict(zip(outputs, values))

    def _warm_up(self):
        path = os.path.join(self.path, "assets.extra", "tf_serving_warmup_requests")
        if not os.path.isfile(path):
            return 0
        count = 0
        for record in tf.compat.v1.io.tf_record_iterator(path):
            log = prediction_log_pb2.PredictionLog.FromString(record)
            request = log.predict_log.request
            self.predict(request.model_spec.signature_name,
                         {k: tf.make_ndarray(v) for k, v in request.inputs.items()}, request.output_filter)
            count += 1
        return count


def _tensor_proto(value):
    return tf.make_tensor_proto(value)


def _proto_to_array(name, proto):
    """The np.ndarray of a request's TensorProto; a malformed one (content that does not fill its
    shape, an unknown dtype, ...) is INVALID_ARGUMENT naming the input, as TF Serving's tensor
    parsing reports it."""
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
        shape = [d.size for d in proto.tensor_shape.dim]
        if proto.tensor_shape.unknown_rank or any(d < 0 for d in shape):
            raise ValueError(f"shape {shape} is not fully defined")
        count = int(np.prod(shape, dtype=np.int64))
        if dtype == tf.string:
            if len(proto.string_val) not in (count, 1) or (count == 0 and proto.string_val):
                raise ValueError(f"{len(proto.string_val)} strings for shape {shape}")
        elif proto.tensor_content:
            if len(proto.tensor_content) != count * dtype.size:
                raise ValueError(f"{len(proto.tensor_content)} bytes of content for {dtype.name} {shape} "
                                 f"({count * dtype.size} expected)")
        return tf.make_ndarray(proto)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ServingError(3, f"input '{name}': tensor parsing error: {e}") from None


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model):
        self.model = model

    def Predict(self, request, context):
        model = self.model
        try:
            if request.model_spec.name != model.name:
                raise ServingError(5, f"Servable not found for request: Latest({request.model_spec.name})")
            if request.model_spec.HasField("version") and request.model_spec.version.value != model.version:
                raise ServingError(5, f"Servable not found for request: Specific({request.model_spec.name}, "
                                      f"{request.model_spec.version.value})")
            inputs = {k: _proto_to_array(k, v) for k, v in request.inputs.items()}
            outputs = model.predict(request.model_spec.signature_name, inputs, request.output_filter)
        except ServingError as e:
            context.abort(_GRPC_CODES.get(e.code, grpc.StatusCode.UNKNOWN), e.message)
        except Exception as e:  # a bug of the stand-in: INTERNAL, as TF Serving reports its own
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(_tensor_proto(value))
        return response


# ----------------------------------------------------------------------------- REST


def _json_to_array(value, dtype, name):
    """A JSON value of input `name` -> np.ndarray of the signature's dtype (TF Serving's rules:
    {"b64": ...} for binary strings; numbers must fit the dtype)."""
    if dtype == tf.string:
        def decode(v):
            if isinstance(v, dict) and set(v) == {"b64"}:
                try:
                    return base64.b64decode(v["b64"], validate=True)
                except (ValueError, TypeError):
                    raise ServingError(3, f"input '{name}': invalid base64 in {{\"b64\": ...}}") from None
            if isinstance(v, str):
                return v.encode("utf-8")
            if isinstance(v, list):
                return [decode(x) for x in v]
            raise ServingError(3, f"JSON Value: {json.dumps(v)[:80]} Type: {type(v).__name__} is not of expected "
                                  f"type: string (input '{name}')")
        array = np.array(decode(value), dtype=object)
    else:
        try:
            array = np.array(value)
        except ValueError as e:
            raise ServingError(3, f"input '{name}': the JSON lists are not rectangular ({e})") from None
        if array.dtype == object:
            raise ServingError(3, f"input '{name}': the JSON lists are not rectangular")
        np_dtype = dtype.as_numpy_dtype
        if array.size and array.dtype.kind not in "biuf":
            raise ServingError(3, f"JSON Value of input '{name}' is not of expected type: {dtype.name}")
        if array.size and np.issubdtype(np_dtype, np.integer):
            info = np.iinfo(np_dtype)
            if array.dtype.kind == "f" and not np.all(np.floor(array) == array):
                raise ServingError(3, f"JSON Value of input '{name}' is not of expected type: {dtype.name} "
                                      "(a non-integer number)")
            if array.min() < info.min or array.max() > info.max:
                raise ServingError(3, f"JSON Value of input '{name}' is out of the range of {dtype.name}")
        array = array.astype(np_dtype)
    return array


def _array_to_json(array):
    if array.dtype == object or array.dtype.kind == "S":
        return [_array_to_json(a) for a in array] if array.ndim else {"b64": base64.b64encode(array).decode()}
    return array.tolist()


def rest_predict(model, body, signature_default="serving_default"):
    """TF Serving's REST :predict on a parsed JSON body: row ("instances") or columnar ("inputs")
    format; returns the JSON response body."""
    if not isinstance(body, dict):
        raise ServingError(3, "the request body must be a JSON object")
    signature = body.get("signature_name", signature_default)
    if signature not in model.signatures:
        raise ServingError(5, f"Serving signature name: \"{signature}\" not found in signature def")
    sig = model.signatures[signature]
    dtypes = {k: tf.dtypes.as_dtype(v.dtype) for k, v in sig.inputs.items()}
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(3, "Missing 'inputs' or 'instances' key (exactly one is required)")
    row = "instances" in body
    if row:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise ServingError(3, "'instances' must be a list")
        if len(dtypes) == 1:
            (name,) = dtypes
            inputs = {name: _json_to_array(instances, dtypes[name], name)}
        else:
            if not all(isinstance(i, dict) for i in instances):
                raise ServingError(3, "with several inputs, every instance must be an object of named inputs")
            inputs = {k: _json_to_array([i.get(k) for i in instances], d, k) for k, d in dtypes.items()}
    else:
        value = body["inputs"]
        if len(dtypes) == 1 and not (isinstance(value, dict) and set(value) <= set(dtypes) and value):
            (name,) = dtypes
            value = {name: value}
        if not isinstance(value, dict):
            raise ServingError(3, "'inputs' must be an object of named inputs")
        inputs = {k: _json_to_array(v, dtypes[k], k) if k in dtypes else np.asarray(v) for k, v in value.items()}
    outputs = model.predict(signature, inputs)
    if not row:
        return {"outputs": {k: _array_to_json(v) for k, v in outputs.items()}}
    batch = {v.shape[0] if v.ndim else None for v in outputs.values()}
    if len(batch) != 1 or None in batch:
        raise ServingError(3, "the outputs do not share a batch dimension; use the columnar format ('inputs')")
    n = batch.pop()
    return {"predictions": [{k: _array_to_json(v[i]) for k, v in outputs.items()} for i in range(n)]}


def _rest_handler(model):
    pattern = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(:predict)?$")

    class Handler(BaseHTTPRequestHandler):
        timeout = 60  # a client that announces more bytes than it sends is dropped, not waited on forever

        def log_message(self, *args):  # quiet
            pass

        def _reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, want_predict):
            m = pattern.match(self.path)
            if not m or bool(m.group(3)) != want_predict:
                raise ServingError(5, f"Malformed request: {self.command} {self.path}")
            if m.group(1) != model.name or (m.group(2) and int(m.group(2)) != model.version):
                raise ServingError(5, f"Servable not found for request: {m.group(1)}")

        def do_GET(self):
            try:
                self._route(False)
                self._reply(200, {"model_version_status": [{"version": str(model.version), "state": "AVAILABLE",
                                                            "status": {"error_code": "OK", "error_message": ""}}]})
            except ServingError as e:
                self._reply(_HTTP_STATUS.get(e.code, 500), {"error": e.message})

        def do_POST(self):
            try:
                self._route(True)
                length = self.headers.get("Content-Length") or "0"
                if not length.isdigit():
                    raise ServingError(3, f"Malformed request: Content-Length {length!r} is not a byte count")
                try:
                    body = json.loads(self.rfile.read(int(length)) or b"null")
                except ValueError as e:
                    raise ServingError(3, f"JSON Parse error: {e}") from None
                except RecursionError:
                    raise ServingError(3, "JSON Parse error: the document nests too deeply") from None
                self._reply(200, rest_predict(model, body))
            except ServingError as e:
                self._reply(_HTTP_STATUS.get(e.code, 500), {"error": e.message})
            except RecursionError:
                self._reply(400, {"error": "the request nests too deeply"})
            except Exception as e:  # a bug of the stand-in: an error reply, not a dropped connection
                self._reply(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 128  # listen backlog: bursts of concurrent clients queue instead of being reset
    daemon_threads = True


class ModelServer:
    """Serves <base_path>/<latest version> as `name` on 127.0.0.1: gRPC on `grpc_port`, REST on
    `rest_port` (0: any free port; see the attributes after start())."""

    def __init__(self, base_path, name, grpc_port=0, rest_port=0):
        versions = sorted(int(v) for v in os.listdir(base_path) if v.isdigit())
        if not versions:
            raise FileNotFoundError(f"no version folder in {base_path}")
        self.model = LoadedModel(os.path.join(base_path, str(versions[-1])), name, versions[-1])
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                 options=[("grpc.max_receive_message_length", 64 << 20),
                                          ("grpc.max_send_message_length", 64 << 20)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self.model), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{grpc_port}")
        self._http = _HTTPServer(("127.0.0.1", rest_port), _rest_handler(self.model))
        self.rest_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def start(self):
        self._grpc.start()
        self._http_thread.start()
        return self

    def stop(self):
        self._grpc.stop(grace=None)
        self._http.shutdown()
        self._http.server_close()
        self.model.session.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
