"""Local stand-ins for @rules_cc and @rules_java on Bazel 4 (Debian's offline bazel-bootstrap).

Bazel 4's own tool files load @rules_cc//cc:defs.bzl and @rules_java//java:defs.bzl (even a
pure C++ build needs both: the registered Java toolchains are parsed), and Bazel downloads
those repositories from GitHub when the workspace does not define them. Without network that
fails, and Debian's bazel-rules-cc / bazel-rules-java packages are made for a newer Bazel. At
the versions Bazel 4 pins, the defs.bzl of both only forwarded to Bazel's built-in rules; these
repository rules write the same forwarding functions locally.
"""

# What Bazel 4's tools/ and a generated @local_config_cc load from each repository.
_CC_RULES = [
    "cc_binary",
    "cc_import",
    "cc_library",
    "cc_proto_library",
    "cc_test",
    "cc_toolchain",
    "cc_toolchain_suite",
    "fdo_prefetch_hints",
    "fdo_profile",
    "objc_import",
    "objc_library",
]

_JAVA_RULES = [
    "java_binary",
    "java_import",
    "java_library",
    "java_lite_proto_library",
    "java_package_configuration",
    "java_plugin",
    "java_proto_library",
    "java_runtime",
    "java_test",
    "java_toolchain",
]

def _forwarding_defs(rules):
    lines = ['"""Forwards to Bazel\'s built-in rules (written by //third_party/bazel4:native_rules.bzl)."""', ""]
    for rule in rules:
        lines += ["def %s(**attrs):" % rule, "    native.%s(**attrs)" % rule, ""]
    return "\n".join(lines)

def _native_rules_impl(repository_ctx):
    package = repository_ctx.attr.package
    repository_ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % repository_ctx.name)
    repository_ctx.file("BUILD", "")
    repository_ctx.file(package + "/defs.bzl", _forwarding_defs(repository_ctx.attr.rules))
    build = ['package(default_visibility = ["//visibility:public"])', ""]
    if repository_ctx.attr.toolchain_type:
        build.append('alias(name = "toolchain_type", actual = "%s")' % repository_ctx.attr.toolchain_type)
    repository_ctx.file(package + "/BUILD", "\n".join(build) + "\n")

_native_rules = repository_rule(
    implementation = _native_rules_impl,
    attrs = {
        "package": attr.string(mandatory = True),
        "rules": attr.string_list(mandatory = True),
        "toolchain_type": attr.string(),
    },
)

def native_rules_cc(name = "rules_cc"):
    """@rules_cc//cc:defs.bzl as wrappers of the native C++ rules."""
    _native_rules(
        name = name,
        package = "cc",
        rules = _CC_RULES,
        toolchain_type = "@bazel_tools//tools/cpp:toolchain_type",
    )

def native_rules_java(name = "rules_java"):
    """@rules_java//java:defs.bzl as wrappers of the native Java rules."""
    _native_rules(
        name = name,
        package = "java",
        rules = _JAVA_RULES,
    )
