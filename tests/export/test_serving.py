"""Serving the stock-op export through a stand-in for tensorflow_model_server
(tests/support/serving_server.py: a TF1 session over the SavedModel, gRPC PredictionService and REST
:predict on loopback, warm-up replayed on load): scripts/serving_client.py end to end over gRPC
and REST against the in-process detector, and bad input at the serving boundary answered with
InvalidArgument and a message naming the problem, the server serving on afterwards."""
import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import export_fixtures as fx
from image_bombs import gif_frames, png_bomb
from serving_server import ModelServer

CLIENT_PY = os.path.join(fx.ROOT, "scripts/serving_client.py")
MODEL = "lhrcnn"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = fx.export(tmp_path_factory, "tf")
    with ModelServer(os.path.dirname(path), MODEL) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def grpc_predict(stub, signature, **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value if isinstance(value, type(request.inputs[key])) else
                                     tf.make_tensor_proto(value))
    response = stub.Predict(request, timeout=120)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def rest_predict(server, body):
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}:predict",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_replays_the_warmup_requests(server):
    assert server.model.warmup_requests == 2


def run_client(*args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, CLIENT_PY, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _client_detections(output, name):
    return json.loads((output / f"{name}_detections.json").read_text())["detections"]


def _expected_detections(reference, index, label_map):
    n = int(reference["num_detections"][index])
    return [{"class": label_map[int(reference["detection_classes"][index, k])],
             "box": reference["detection_boxes_pixels"][index, k], "score": reference["detection_scores"][index, k]}
            for k in range(n)]


def _assert_client_matches(actual, expected):
    assert len(actual) == len(expected) > 0
    assert [d["class"] for d in actual] == [d["class"] for d in expected]
    np.testing.assert_allclose([d["box"] for d in actual], [d["box"] for d in expected], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose([d["score"] for d in actual], [d["score"] for d in expected], rtol=1e-4, atol=1e-5)


def test_client_grpc_serve_bytes(server, tmp_path_factory, tmp_path):
    a, b = fx.make_image(60, 90, 21), fx.make_image(80, 50, 22)
    (tmp_path / "a.png").write_bytes(fx.encode(a, "PNG"))
    (tmp_path / "b.jpg").write_bytes(fx.encode(b, "JPEG"))
    label_map = os.path.join(os.path.dirname(fx.export(tmp_path_factory, "tf")), "1", "assets.extra",
                             "label_map.json")
    out = tmp_path / "drawn"
    proc = run_client("--server", f"127.0.0.1:{server.grpc_port}", "--label-map", label_map, "--score-threshold",
                      0, "--output", out, tmp_path / "a.png", tmp_path / "b.jpg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    decoded = [tf.io.decode_image((tmp_path / f).read_bytes(), channels=3).numpy() for f in ("a.png", "b.jpg")]
    reference = fx.reference_outputs(fx.detector(tmp_path_factory, "tf"), decoded,
                                     fx.model(tmp_path_factory)["category_ids"])
    names = {i: n for n, i in fx.CATEGORY_IDS.items()}
    for index, name in enumerate(("a", "b")):
        _assert_client_matches(_client_detections(out, name), _expected_detections(reference, index, names))
        assert (out / f"{name}_detections.png").stat().st_size > 0
    first = _client_detections(out, "a")[0]
    assert f"  {first['class']:<16} {first['score']:.3f}" in proc.stdout


def test_client_rest_serving_default(server, tmp_path_factory, tmp_path):
    image = fx.make_image(50, 75, 23)
    (tmp_path / "c.png").write_bytes(fx.encode(image, "PNG"))
    out = tmp_path / "drawn"
    proc = run_client("--server", f"127.0.0.1:{server.rest_port}", "--rest", "--signature", "serving_default",
                      "--score-threshold", 0, "--output", out, tmp_path / "c.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = fx.reference_outputs(fx.detector(tmp_path_factory, "tf"), [image],
                                     fx.model(tmp_path_factory)["category_ids"])
    names = {i: f"category {i}" for i in fx.CATEGORY_IDS.values()}  # no --label-map: ids
    _assert_client_matches(_client_detections(out, "c"), _expected_detections(reference, 0, names))


def test_client_errors(server, tmp_path):
    proc = run_client("--server", f"127.0.0.1:{server.grpc_port}", tmp_path / "missing.jpg", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == f"error: image {tmp_path}/missing.jpg " \
                                                                           "does not exist", proc.stderr
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n but no image after the signature")
    proc = run_client("--server", f"127.0.0.1:{server.grpc_port}", tmp_path / "junk.png", cwd=tmp_path)
    assert proc.returncode == 1 and "cannot be decoded" in proc.stderr.strip().splitlines()[-1], proc.stderr
    (tmp_path / "ok.png").write_bytes(fx.encode(fx.make_image(20, 20, 1), "PNG"))
    proc = run_client("--server", f"127.0.0.1:{server.grpc_port}", "--model-name", "other", tmp_path / "ok.png",
                      cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "NOT_FOUND" in last and "Traceback" not in proc.stderr, proc.stderr
    proc = run_client("--server", f"127.0.0.1:{server.rest_port}", "--rest", tmp_path / "ok.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- bad input


TRUNCATED_JPEG = fx.encode(fx.make_image(40, 40, 5), "JPEG")[:200]
PNG_BOMB = png_bomb(23170, 23170)
GIF_BOMB = gif_frames([(20000, 1), (1, 20000)] + [(1, 1)] * 10)
BAD_INPUTS = {
    "float images": ("serving_default", {"images": np.zeros([1, 32, 32, 3], np.float32)}, "uint8"),
    "rank 3": ("serving_default", {"images": np.zeros([32, 32, 3], np.uint8)},
               "must be a batch of RGB images, uint8 [N, H, W, 3] (3 channels); got shape] [32 32 3]"),
    "rank 5": ("serving_default", {"images": np.zeros([1, 8, 8, 3, 2], np.uint8)}, "got shape] [1 8 8 3 2]"),
    "4 channels": ("serving_default", {"images": np.zeros([1, 32, 32, 4], np.uint8)}, "got shape] [1 32 32 4]"),
    "1 channel": ("serving_default", {"images": np.zeros([1, 32, 32, 1], np.uint8)}, "got shape] [1 32 32 1]"),
    "empty batch": ("serving_default", {"images": np.zeros([0, 32, 32, 3], np.uint8)}, "empty batch"),
    "zero height": ("serving_default", {"images": np.zeros([1, 0, 32, 3], np.uint8)}, "non-zero height"),
    "wrong input name": ("serving_default", {"image": np.zeros([1, 32, 32, 3], np.uint8)}, "Missing but required"),
    "undecodable bytes": ("serve_bytes", {"image_bytes": np.array([b"no image", b"x"], dtype=object)},
                          "is not a JPEG or PNG image"),  # either element may be reported first
    "empty string": ("serve_bytes", {"image_bytes": np.array([fx.encode(fx.make_image(9, 9, 0), "PNG"), b""],
                                                               dtype=object)}, "element] [1] [is not a JPEG"),
    "truncated jpeg": ("serve_bytes", {"image_bytes": np.array([TRUNCATED_JPEG], dtype=object)}, "JPEG"),
    "png bomb": ("serve_bytes", {"image_bytes": np.array([fx.encode(fx.make_image(9, 9, 0), "PNG"), PNG_BOMB],
                                                           dtype=object)},
                 "element] [1] [decodes to] [1] [frame(s) of] [23170] [x] [23170]"),
    "gif bomb": ("serve_bytes", {"image_bytes": np.array([GIF_BOMB], dtype=object)},
                 "[12] [frame(s) of] [20000] [x] [20000] [pixels (read from its header): more than the 67108864"),
    "no bytes": ("serve_bytes", {"image_bytes": np.array([], dtype=object)}, "empty batch"),
    "bytes matrix": ("serve_bytes", {"image_bytes": np.array([[b"a", b"b"]], dtype=object)},
                     "string [N]; got shape] [1 2]"),
    "bytes scalar": ("serve_bytes", {"image_bytes": np.array(b"abc", dtype=object)}, "string [N]; got shape] []"),
    "int bytes": ("serve_bytes", {"image_bytes": np.array([1, 2], np.int32)}, "string"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_grpc(stub, case):
    signature, inputs, fragment = BAD_INPUTS[case]
    if case == "no bytes":
        inputs = {"image_bytes": tf.make_tensor_proto([], dtype=tf.string, shape=[0])}
    with pytest.raises(grpc.RpcError) as error:
        grpc_predict(stub, signature, **inputs)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert fragment in error.value.details(), error.value.details()


def test_server_serves_on_after_bad_input(stub, tmp_path_factory):
    image = fx.make_image(30, 45, 31)
    out = grpc_predict(stub, "serving_default", images=image[None])
    expected = fx.reference_outputs(fx.detector(tmp_path_factory, "tf"), [image],
                                    fx.model(tmp_path_factory)["category_ids"])
    fx.assert_same_detections(out, expected, "after bad input")


@pytest.mark.parametrize("body, fragment", [
    ({"instances": [[[[0.5, 1.0, 2.0]]]]}, "uint8"),
    ({"instances": [[[[1, 2, 3, 4]]]]}, "(3 channels); got shape] [1 1 1 4]"),
    ({"instances": []}, "must be a batch of RGB images"),
    ({"instances": [[[1, 2, 3]], [[1, 2]]]}, "rectangular"),
    ({"signature_name": "serve_bytes", "instances": [{"b64": base64.b64encode(b"GIF9 nope").decode()}]},
     "is not a JPEG or PNG"),
    ({"signature_name": "serve_bytes", "inputs": []}, "empty batch"),
    ({"signature_name": "nope", "instances": []}, "not found"),
])
def test_bad_input_rest(server, body, fragment):
    status, answer = rest_predict(server, body)
    assert status in (400, 404) and fragment in answer["error"], answer


# ----------------------------------------------------------------------------- the stand-in's own protocol handling


def _malformed_protos():
    content = tf.make_tensor_proto(np.zeros([1, 8, 8, 3], np.uint8))
    content.tensor_content = content.tensor_content[:-5]  # 5 bytes short of the shape
    strings = tf.make_tensor_proto(np.array([b"a", b"b", b"c"], dtype=object))
    strings.tensor_shape.dim[0].size = 2  # 3 strings for 2 elements
    negative = tf.make_tensor_proto(np.zeros([1, 8, 8, 3], np.uint8))
    negative.tensor_shape.dim[1].size = -1
    return {"short content": ("serving_default", "images", content),
            "string count": ("serve_bytes", "image_bytes", strings),
            "negative dim": ("serving_default", "images", negative)}


@pytest.mark.parametrize("case", sorted(_malformed_protos()))
def test_malformed_tensor_protos_are_invalid_argument(stub, case):
    signature, name, proto = _malformed_protos()[case]
    with pytest.raises(grpc.RpcError) as error:
        grpc_predict(stub, signature, **{name: proto})
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.value.code(), error.value.details())
    assert f"input '{name}': tensor parsing error" in error.value.details()


def _raw_http(server, head, body=b""):
    """(status, parsed JSON body) of a hand-written HTTP request."""
    import http.client
    import socket
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=60) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        return reply.status, json.loads(reply.read())


@pytest.mark.parametrize("length", ["abc", "-5", "1e3"])
def test_rest_bad_content_length_gets_an_error_reply(server, length):
    status, answer = _raw_http(server, f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n"
                                       f"Content-Length: {length}", b"{}")
    assert status == 400 and "Content-Length" in answer["error"], answer


def test_rest_deeply_nested_json_gets_an_error_reply(server):
    body = b"[" * 100_000 + b"]" * 100_000
    status, answer = _raw_http(server, f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n"
                                       f"Content-Length: {len(body)}", body)
    assert status == 400 and "nests too deeply" in answer["error"], answer


def test_rest_serves_a_burst_of_concurrent_clients(server):
    """64 clients connect at once (more than a default listen backlog of 5): none is reset."""
    import socket
    barrier = threading.Barrier(64)

    def client(_):
        barrier.wait(timeout=60)
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=60) as sock:
            sock.sendall(f"GET /v1/models/{MODEL} HTTP/1.0\r\n\r\n".encode())
            return sock.makefile("rb").readline()

    with futures.ThreadPoolExecutor(64) as pool:
        first_lines = list(pool.map(client, range(64)))
    assert all(line.startswith(b"HTTP/1.0 200") for line in first_lines), first_lines
    # Linux mostly retries a connection the backlog drops instead of resetting it, so the burst
    # alone may pass with a small backlog: read the listening socket's backlog itself (ss: Send-Q)
    if shutil.which("ss"):
        listing = subprocess.run(["ss", "-ltnH", f"sport = :{server.rest_port}"], capture_output=True, text=True)
        backlogs = [int(line.split()[2]) for line in listing.stdout.splitlines() if line.startswith("LISTEN")]
        assert backlogs and min(backlogs) >= 64, listing.stdout
