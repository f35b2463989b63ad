"""Property-based tests (hypothesis): any search space or trial config validates or is one line.

A user's YAML can hold anything: wrong types, numbers out of range, unknown choices, stray keys,
deep nesting. Whatever it is, `load_space` and `TrialConfig.from_dict` must either accept it or
raise a ConfigError whose message is one line naming the file and the field; any other exception
would reach the user as a traceback. The inputs are random YAML documents and random mutations of
valid spaces (the tests' tiny space and every shipped one).
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
import yaml
from conftest import TINY_SPACE
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lorasweep.config import TrialConfig, WorldConfig
from lorasweep.search_options import PRUNERS, SAMPLERS
from lorasweep.search_space import PARAM_KEYS, SPACE_KEYS, load_space
from lorasweep.validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "search_spaces").glob("*.yaml"))}
VALID_SPACES = {"tiny": TINY_SPACE, **SHIPPED}
# each example overwrites the same files: hypothesis runs a test body many times per pytest call,
# and function-scoped fixtures such as tmp_path are not reset between examples
WORK = Path(tempfile.mkdtemp(prefix="lorasweep-properties-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per in-memory study

# Keys the code looks for, so that random documents reach deep into validation, not only the
# "unknown key" check; plus arbitrary text.
KNOWN_KEYS = sorted(
    {*SPACE_KEYS, *PARAM_KEYS, *TrialConfig.__dataclass_fields__, *WorldConfig.__dataclass_fields__}
    | {"name", *PRUNERS, *SAMPLERS}
    | {option for kinds in (PRUNERS, SAMPLERS) for options in kinds.values() for option in options}
)
# Values a field may be given by mistake: numbers at and beyond the edges of every allowed range
# (0, negative, 1, huge, not finite), numbers written as text, and look-alikes of valid choices.
EDGE_NUMBERS = st.sampled_from(
    [0, -1, 1, 2, 0.0, -0.5, 0.5, 1.0, 1.5, 1e-12, 1e308, 10**30, -(10**30), 10**400]
    + [float("nan"), float("inf"), float("-inf")]
)
TEXTS = st.sampled_from(["", " ", "lora", "adapter", "qkv", "3e-4", "nan", "1e400", "{question}", "0x10"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    EDGE_NUMBERS,
    TEXTS,
    st.text(max_size=12),
)
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8), st.integers(-2, 2), st.booleans())
YAML_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)),
    max_leaves=20,
)


def one_line_error(error: ConfigError, source: str) -> str:
    """The message, checked to be one line that names its source."""
    text = str(error)
    assert len(text.splitlines()) == 1, text
    assert text.startswith(source), text
    return text


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position in a nested document: the keys and list indices that lead to it."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


@st.composite
def mutated_spaces(draw) -> dict:
    """A valid space with one to three mistakes: a key dropped, a value replaced, a key added."""
    space = copy.deepcopy(VALID_SPACES[draw(st.sampled_from(sorted(VALID_SPACES)))])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(space)))
        action = draw(st.sampled_from(["drop", "replace", "add"]))
        if not path:  # the document itself: it can only gain a key
            space[draw(KEYS)] = draw(YAML_VALUES)
            continue
        parent = space
        for key in path[:-1]:
            parent = parent[key]
        if action == "add" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(KEYS)] = draw(YAML_VALUES)
        elif action == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(st.one_of(EDGE_NUMBERS, TEXTS, YAML_VALUES))
    return space


def spaces_with(**changes: Any) -> dict:
    """The tiny space with top-level keys or params replaced: the inputs of bugs found so far."""
    params = {**TINY_SPACE["params"], **changes.pop("params", {})}
    return {**TINY_SPACE, "params": params, **changes}


def write_space(document: Any) -> Path:
    path = WORK / "space.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return path


def check_space(path: Path) -> None:
    """load_space accepts the file, or says what is wrong in one line; an accepted space samples."""
    try:
        space = load_space(path)
    except ConfigError as err:
        one_line_error(err, str(path))
        return
    # an accepted space must sample trial configs: each is valid, or (a combination of searched
    # values that breaks a rule across fields) a ConfigError that fails only that trial
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        try:
            space.suggest(trial)
        except ConfigError as err:
            one_line_error(err, str(path))
        study.tell(trial, 0.0)


# no deadline and no "too slow" check: the machine running the tests may be busy with others
MANY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(MANY, max_examples=60)


@MANY
@given(YAML_VALUES)
def test_any_yaml_document_is_a_space_or_a_one_line_error(document):
    check_space(write_space(document))


@MANY
@given(st.dictionaries(st.sampled_from(SPACE_KEYS), YAML_VALUES, min_size=1))
def test_any_top_level_keys_are_a_space_or_a_one_line_error(document):
    check_space(write_space(document))


@MANY
@given(mutated_spaces())
# bugs hypothesis found, kept as regressions: a key with a line break made a two-line message; a
# list where a name belongs raised TypeError (unhashable); a float step too fine for its range
# passed validation and then failed the study at its first trial (decimal.InvalidOperation)
@example({**TINY_SPACE, "\r": None})
@example(spaces_with(params={"lora_learning_rate": {"field": [], "low": 3e-4, "high": 3e-2}}))
@example(spaces_with(sampler={"name": ["tpe"]}))
@example(spaces_with(pruner=["median"], objective="constrained", forget_tolerance=0.1))
@example(spaces_with(params={"epochs": {"low": 1, "high": 1e30, "step": 1.0}}, baselines=[]))
def test_mutated_valid_spaces_are_a_space_or_a_one_line_error(document):
    check_space(write_space(document))


@FEW
@given(st.binary(max_size=200))
def test_any_bytes_are_a_space_or_a_one_line_error(data):
    path = WORK / "bytes.yaml"
    path.write_bytes(data)
    check_space(path)


# Pieces of YAML text that PyYAML's parser accepts but its constructors may not turn into values
# (impossible dates, explicit tags on the wrong text, integers of thousands of digits), or that
# nest deeply; joined at random with structure characters.
YAML_FRAGMENTS = st.sampled_from(
    ["a: ", "config: ", "params: ", "rank: ", "- ", "\n", "  ", "{", "}", "[", "]", ",", ":", "&x ", "*x"]
    + ["2020-13-45", "2020-01-01 25:00:00", "!!int abc", "!!float x", "!!timestamp 5", "!!binary @@"]
    + ["1" * 5000, "1" + "0" * 400 + ".0", "[" * 200, "!!python/object:os.system 1", "'", '"', "\t"]
)


@FEW
@given(st.lists(YAML_FRAGMENTS, max_size=8).map("".join))
# bugs found: PyYAML raised ValueError, AttributeError or RecursionError, not YAMLError, on these
@example("a: 2020-13-45")
@example("a: !!timestamp 5")
@example("a: " + "1" * 5000)
@example("[" * 600)
def test_any_yaml_text_is_a_space_or_a_one_line_error(text):
    path = WORK / "text.yaml"
    path.write_text(text)
    check_space(path)


def check_config(data: Any) -> None:
    try:
        TrialConfig.from_dict(data, "trial.yaml")
    except ConfigError as err:
        one_line_error(err, "trial.yaml: ")


TRIAL_FIELDS = st.sampled_from([*TrialConfig.__dataclass_fields__, "methd"])
WORLD_FIELDS = st.sampled_from([*WorldConfig.__dataclass_fields__, "n_people"])


@MANY
@given(st.one_of(TRIAL_FIELDS, WORLD_FIELDS.map("world.{}".format)), st.one_of(EDGE_NUMBERS, TEXTS))
@example("learning_rate", 10**400)  # bug found: OverflowError converting it to a float
@example("world.pretrain_lr", 10**400)
def test_any_edge_value_of_one_field_is_a_trial_config_or_a_one_line_error(name, value):
    world, _, field = name.rpartition(".")
    check_config({"world": {field: value}} if world else {field: value})


@MANY
@given(YAML_VALUES)
def test_any_value_is_a_trial_config_or_a_one_line_error(data):
    check_config(data)


@MANY
@given(
    st.dictionaries(TRIAL_FIELDS, st.one_of(EDGE_NUMBERS, TEXTS, SCALARS, YAML_VALUES)),
    st.one_of(st.none(), st.dictionaries(WORLD_FIELDS, st.one_of(EDGE_NUMBERS, SCALARS, YAML_VALUES))),
)
def test_any_trial_fields_are_a_trial_config_or_a_one_line_error(fields, world):
    check_config(fields if world is None else {**fields, "world": world})


# each example runs the CLI in-process; a mutation that is still valid is skipped
@settings(MANY, max_examples=15, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(mutated_spaces())
def test_optimize_on_a_bad_space_exits_2_in_one_line_and_creates_no_study(document):
    from lorasweep.cli import app

    space = write_space(document)
    try:
        load_space(space)
    except ConfigError:
        pass
    else:
        assume(False)  # a mutation that is still valid would start a real study
    db = WORK / "x.db"
    db.unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["optimize", "--space", str(space), "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {space}"), result.stderr
    # never a half-written study
    assert not db.exists() or optuna.get_all_study_names(f"sqlite:///{db}") == []


# --storage URLs: whatever the user typed, the URL as printed (storage_label) never holds the
# password, and printing it never fails.
PASSWORD = "S3CRET"  # upper case: the drawn users, hosts and databases are lower case
NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=8)
PASSWORD_TEXT = st.text("abcxyz019@:/?#%&=+!*", max_size=5)


@st.composite
def storage_urls(draw) -> str:
    scheme = draw(st.sampled_from(["postgresql", "postgresql+psycopg", "mysql", "mysql+pymysql", "foo"]))
    user, host, db = draw(NAMES), draw(NAMES), draw(NAMES)
    password = draw(PASSWORD_TEXT) + PASSWORD + draw(PASSWORD_TEXT)  # special characters around it
    port = draw(st.one_of(st.integers(0, 65535).map(str), NAMES))
    if draw(st.booleans()):
        return f"{scheme}://{user}:{password}@{host}:{port}/{db}"
    return f"{scheme}://{user}@{host}:{port}/{db}?password={password}"  # libpq takes this too


@MANY
@given(storage_urls())
@example(f"postgresql://u:{PASSWORD}@db.example:notaport/db")
@example(f"postgresql://u@db.example:5432/db?password={PASSWORD}")
@example(f"postgresql://u:pa@{PASSWORD}@db.example:5432/db")
def test_a_storage_url_is_printed_without_its_password(url):
    from lorasweep.storages import storage_label

    assert PASSWORD not in storage_label(url)
