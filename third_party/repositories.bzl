"""The external repositories of the lhrcnn workspace, declared by `lhrcnn_repositories()`."""

load("//third_party/bazel4:native_rules.bzl", "native_rules_cc", "native_rules_java")
load("//third_party/tensorflow:tf_configure.bzl", "local_tensorflow_configure")

def _is_bazel4():
    # Debian's bazel-bootstrap 4.2.x reports an empty version (as unreleased builds do).
    version = native.bazel_version
    return version == "" or version.startswith("4.")

def lhrcnn_repositories():
    # Bazel 4 would download @rules_cc and @rules_java from GitHub although, at the versions it
    # pins, both only wrap the native rules: write them locally (third_party/bazel4/).
    # Newer Bazels keep their own, matching versions.
    if _is_bazel4():
        native_rules_cc(name = "rules_cc")
        native_rules_java(name = "rules_java")

    # The TensorFlow installed for $PYTHON_BIN_PATH, else .venv/bin/python, else python3.
    local_tensorflow_configure(name = "local_tensorflow")
