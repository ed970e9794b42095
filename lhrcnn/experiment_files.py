"""New experiment folders from existing ones (`lhrcnn new-experiment DEST --from SOURCE`).

The new folder is self-contained: its config.py subclasses lhrcnn.config.Config directly and writes
out every field whose value differs from Config's default (the source's own fields and those it
inherits from the experiments it extends, with the overrides applied), grouped under Config's
section headings, plus the four data paths and class_names, which a new dataset changes first.
experiment_name and user are left out, so the outputs follow the new folder's name
(output/<parent>/<folder>/). network_desp.py is copied as it is. The folder is written under a
temporary name, loaded back and compared field by field with what was asked, then renamed into
place: it is complete or absent.
"""
import ast
import inspect
import os
import re
import shutil
import tempfile
import textwrap

from lhrcnn import config as config_lib

# Written even at Config's default: what a new dataset changes first.
ALWAYS_WRITTEN = ("class_names", "train_annotations", "train_images", "eval_annotations", "eval_images")
# Never written: they default to the folder's names, which is what a copy needs.
NEVER_WRITTEN = ("experiment_name", "user")


def _sections():
    """[(heading, [field, ...])] in Config's order, read from its source (`# --- heading`)."""
    sections, heading = [], None
    for line in inspect.getsource(config_lib.Config).splitlines():
        header = re.match(r"^    # --- (.+)$", line)
        if header:
            heading = header.group(1).strip()
            sections.append((heading, []))
            continue
        field = re.match(r"^    ([a-z_][a-z0-9_]*) = ", line)
        if field and heading is not None and field.group(1) in config_lib.Config.known_fields():
            sections[-1][1].append(field.group(1))
    return sections


def _literal(name, value):
    """Python source for `value` that reads back equal, with the same types (tuples stay tuples)."""
    text = repr(value)
    try:
        back = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        back = None
    if back != value or repr(back) != text:
        raise ValueError(f"config field {name} = {text} cannot be written as a Python literal")
    return text


def config_source(source_class, overrides, source_dir):
    """The text of a config.py with `source_class`'s fields and `overrides` (see the module
    docstring)."""
    values = {name: getattr(source_class, name) for name in config_lib.Config.known_fields()}
    values.update(overrides)
    default = config_lib.Config
    doc = inspect.getdoc(source_class) or ""
    module_doc = inspect.getdoc(inspect.getmodule(source_class)) or ""
    origin = (f"Made by `lhrcnn new-experiment` from {source_dir}"
              + (" with " + ", ".join(f"{k}={_literal(k, v)}" for k, v in overrides.items()) if overrides else "")
              + ": every field that differs from lhrcnn.config.Config's default is written out "
              "(docs/data.md, docs/training.md).")
    described = module_doc or doc
    lines = textwrap.wrap('"""' + origin.replace('"""', "'''"), width=100, break_on_hyphens=False)
    if described:
        lines += ["", "The source's description:", ""] + [l.replace('"""', "'''") for l in described.splitlines()]
    lines[-1] += '"""'
    lines += ["from lhrcnn.config import Config", "", "", "class ExperimentConfig(Config):"]
    written = 0
    for heading, fields in _sections():
        chosen = [f for f in fields if f not in NEVER_WRITTEN or f in overrides]
        chosen = [f for f in chosen if f in ALWAYS_WRITTEN or f in overrides or values[f] != getattr(default, f)]
        if not chosen:
            continue
        lines += ([""] if written else []) + [f"    # --- {heading}"]
        for name in chosen:
            lines.append(f"    {name} = {_literal(name, values[name])}")
            written += 1
    return "\n".join(lines) + "\n", values


def new_experiment(source_dir, dest_dir, overrides=None):
    """Writes the experiment folder `dest_dir` (config.py, network_desp.py) from `source_dir` with
    `overrides` ({field: value}); returns dest_dir. FileNotFoundError naming a missing source,
    FileExistsError when dest_dir exists, ValueError for an unknown field (the closest one named)."""
    overrides = dict(overrides or {})
    known = config_lib.Config.known_fields()
    for name in overrides:
        if name not in known:
            raise ValueError(config_lib.Config._unknown_message(name, "the overrides"))
    for name in ("config.py", "network_desp.py"):
        if not os.path.isfile(os.path.join(source_dir, name)):
            raise FileNotFoundError(f"{source_dir} is not an experiment folder: {os.path.join(source_dir, name)} "
                                    "does not exist")
    if os.path.exists(dest_dir):
        raise FileExistsError(f"{dest_dir} already exists; choose another folder or remove it")
    source_class = config_lib.load_config_class(source_dir)
    text, values = config_source(source_class, overrides, source_dir)
    parent = os.path.dirname(os.path.abspath(dest_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="." + os.path.basename(os.path.abspath(dest_dir)) + ".", dir=parent)
    try:
        with open(os.path.join(staging, "config.py"), "w") as f:
            f.write(text)
        shutil.copyfile(os.path.join(source_dir, "network_desp.py"), os.path.join(staging, "network_desp.py"))
        written = config_lib.load_config_class(staging)
        for name in known - set(NEVER_WRITTEN):
            if getattr(written, name) != values[name]:
                raise ValueError(f"the written config's {name} is {getattr(written, name)!r}, not {values[name]!r}")
        os.chmod(staging, 0o777 & ~_umask())
        os.rename(staging, dest_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest_dir


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
