"""Repository rule `local_tensorflow_configure`: the installed TensorFlow as a Bazel repository.

It runs Python to ask the installed TensorFlow (tf.sysconfig) where its headers and its
framework library are, symlinks both into the repository and fills BUILD.tpl:

  @<name>//:headers                   cc_library: the TF headers + TF's compile defines
  @<name>//:libtensorflow_framework   cc_import of libtensorflow_framework.so.2
  @<name>//tensorflow/core:framework  alias of :headers, spelled like TensorFlow's own target, so
                                      that a TF Serving workspace can map this repository name
                                      onto @org_tensorflow (repo_mapping) and link the ops into
                                      its own, statically linked TensorFlow

The interpreter is $PYTHON_BIN_PATH, else <workspace>/.venv/bin/python when it exists, else
python3 on PATH. After upgrading TensorFlow in place, run `bazel sync --configure`.
"""

_PYTHON_BIN_PATH = "PYTHON_BIN_PATH"
_FRAMEWORK_LIBRARY = "libtensorflow_framework.so.2"

# One `key<TAB>value` line per fact (a list gives one line per item): Bazel 4's Starlark has
# no json decoder, and this is trivial to parse.
_QUERY = """
import tensorflow as tf
print("version\\t" + tf.__version__)
print("include\\t" + tf.sysconfig.get_include())
print("lib\\t" + tf.sysconfig.get_lib())
for flag in tf.sysconfig.get_compile_flags():
    print("compile_flag\\t" + flag)
"""

def _python_bin(repository_ctx):
    explicit = repository_ctx.os.environ.get(_PYTHON_BIN_PATH, "").strip()
    if explicit:
        return explicit
    workspace = repository_ctx.path(Label("@//:WORKSPACE")).dirname
    venv_python = workspace.get_child(".venv").get_child("bin").get_child("python")
    if venv_python.exists:
        return str(venv_python)
    python3 = repository_ctx.which("python3")
    if python3 == None:
        fail("local_tensorflow_configure: no python3 on PATH; set %s to an interpreter " % _PYTHON_BIN_PATH +
             "that has TensorFlow installed, or run `make install` to create .venv/")
    return str(python3)

def _query_tensorflow(repository_ctx, python):
    result = repository_ctx.execute(
        [python, "-c", _QUERY],
        environment = {"TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout = 600,
    )
    if result.return_code != 0:
        fail(("local_tensorflow_configure: `%s` cannot import tensorflow (set %s to an " +
              "interpreter that has it):\n%s") % (python, _PYTHON_BIN_PATH, result.stderr))
    facts = {"compile_flag": []}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("\t")
        if not sep:
            continue  # anything TensorFlow itself printed
        if key == "compile_flag":
            facts[key].append(value)
        else:
            facts[key] = value
    for key in ("version", "include", "lib"):
        if key not in facts:
            fail("local_tensorflow_configure: %s did not report the TensorFlow %s:\n%s%s" %
                 (python, key, result.stdout, result.stderr))
    return facts

def _defines(compile_flags):
    """The -D flags of tf.sysconfig.get_compile_flags() (ABI, Eigen alignment), without -D."""
    defines = [f[2:] for f in compile_flags if f.startswith("-D")]
    for required in ("_GLIBCXX_USE_CXX11_ABI=", "EIGEN_MAX_ALIGN_BYTES="):
        if not [d for d in defines if d.startswith(required)]:
            fail("local_tensorflow_configure: TensorFlow's compile flags %s lack -D%s..." %
                 (compile_flags, required))
    return defines

def _starlark_list(items):
    return "[" + ", ".join(['"%s"' % i for i in items]) + "]"

def _local_tensorflow_configure_impl(repository_ctx):
    python = _python_bin(repository_ctx)
    facts = _query_tensorflow(repository_ctx, python)
    library = repository_ctx.path(facts["lib"]).get_child(_FRAMEWORK_LIBRARY)
    if not library.exists:
        fail("local_tensorflow_configure: %s does not exist (TensorFlow %s from %s)" %
             (library, facts["version"], python))
    repository_ctx.symlink(facts["include"], "include")
    repository_ctx.symlink(library, _FRAMEWORK_LIBRARY)
    repository_ctx.template("BUILD", repository_ctx.attr._build_template, {
        "%{version}": facts["version"],
        "%{python}": python,
        "%{defines}": _starlark_list(_defines(facts["compile_flag"])),
        "%{framework_library}": _FRAMEWORK_LIBRARY,
    })
    repository_ctx.file("tensorflow/core/BUILD", "\n".join([
        "# TensorFlow's own label for its framework, here only its headers (see //:headers).",
        'alias(name = "framework", actual = "//:headers", visibility = ["//visibility:public"])',
        "",
    ]))

local_tensorflow_configure = repository_rule(
    implementation = _local_tensorflow_configure_impl,
    environ = [_PYTHON_BIN_PATH],
    configure = True,
    local = True,
    attrs = {
        "_build_template": attr.label(default = Label("//third_party/tensorflow:BUILD.tpl")),
    },
    doc = "The TensorFlow installed for PYTHON_BIN_PATH (headers and framework library).",
)
