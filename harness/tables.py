"""Paper tables: load config/papers/<paper>.yaml, check it, and expand its rows into run specs.

A row's settings are merged in this order, later winning: the paper's `defaults`, the selected
scale's section, the row itself, the row's own `scales.<scale>` section. A scale may then map the
row's model and dataset to its own (`models:` / `datasets:`, with "*" for every name). A row with
`grid:` stands for one row per combination of its values, named by filling `{key}` in its name.

Every mistake is reported as one line: `<file>: row '<row>': <what is wrong and how to fix it>`."""
import copy
import functools
import hashlib
import importlib.metadata
import itertools
import json
import os
import pickle
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import jsonschema
import yaml

from core import io
from core.errors import HarnessError
from core.paths import PAPERS_DIR, ROOT, cache_dir
from core.registry import suggest
from core.spec import RunSpec, TrainConfig

SCALES = ("smoke", "laptop", "paper")


class TableError(HarnessError, ValueError):
    """A paper table is wrong; the message is one line naming the file, the row and the fix."""


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):   # libyaml's parser: 10x faster
    """PyYAML keeps the last of two equal keys silently; a table with two rows of one name is a mistake."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *anchor` may repeat
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 reads 25.6e6 and 1e-3 as strings; tables are written by people, so read them as numbers
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


@functools.cache
def _validator(schema_path):
    return jsonschema.Draft202012Validator(yaml.load(Path(schema_path).read_text(), Loader=_UniqueKeyLoader))


def paper_names(papers_dir=PAPERS_DIR):
    return sorted(p.stem for p in Path(papers_dir).glob("*.yaml"))


def _deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _schema_error(err):
    """(row or None, one readable line) from a jsonschema error."""
    where = list(err.absolute_path)
    row = where[1] if len(where) > 1 and where[0] == "rows" else None
    at = ".".join(str(p) for p in (where[2:] if row is not None else where))
    if err.validator == "additionalProperties":
        # the only pattern-keyed mappings are the per-scale sections
        allowed = set(err.schema.get("properties", {})) | (set(SCALES) if err.schema.get("patternProperties") else set())
        extra = next(k for k in err.instance if k not in allowed)
        return row, f"unknown key {extra!r}{' in ' + at if at else ''}; {suggest(extra, allowed)}"
    if err.validator == "required":
        return row, f"{at or 'the table'} is missing a field: {err.message}"
    return row, f"{at or 'the table'}: {err.message}"


def _coerce(value, typ, what):
    """Check a hyperparameter against its dataclass field type; YAML reads 1e-3 as a string."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(typ):
            return None
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        try:
            if not isinstance(value, bool):
                return float(value)
        except (TypeError, ValueError):
            pass
    elif typ in (list, dict, str) or typing.get_origin(typ) in (list, dict):
        if isinstance(value, typing.get_origin(typ) or typ):
            return value
    else:
        return value
    raise ValueError(f"{what}={value!r} should be of type {getattr(typ, '__name__', typ)}")


def check_dataclass_args(cls, given, what):
    """Unknown keys get a suggestion; known keys are type-checked and coerced."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    out = {}
    for k, v in (given or {}).items():
        if k not in known:
            raise ValueError(f"unknown {what} key {k!r}; {suggest(k, known)}")
        out[k] = _coerce(v, hints[k], f"{what}.{k}")
    return out


def check_budget(method_cls, budget):
    keys = method_cls.budget_keys
    for k, v in budget.items():
        if k not in keys:
            if not keys:
                raise ValueError(f"method {method_cls.name!r} takes no budget; remove budget.{k}")
            raise ValueError(f"unknown budget key {k!r} for method {method_cls.name!r}; {suggest(k, keys)}")
        spec = keys[k]
        if spec.kind == "text":
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise ValueError(f"budget.{k} should be a name or number: {spec.meaning}")
            continue
        values = v.values() if isinstance(v, dict) else [v]
        for x in values:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not spec.low <= x < spec.high:
                raise ValueError(f"budget.{k}={x!r} is outside [{spec.low}, {spec.high}): "
                                 f"{spec.meaning}")
    for k, spec in keys.items():
        if spec.required and k not in budget:
            raise ValueError(f"method {method_cls.name!r} needs budget.{k} ({spec.meaning})")


def check_settings(method, model, dataset, train=None, method_args=None, model_args=None, dataset_args=None,
                   budget=None, init=None):
    """Every setting of one run, checked as a table row's are when the tables load; returns its
    (train, method_args) with YAML's strings read as numbers (1e-3). Raises ValueError or KeyError
    with one line naming the setting and the fix."""
    import data, methods, models   # here, not at the top: they import torch (see cached_expand)
    models.check_model(model)
    models.check_model_args(model, model_args)
    data.check_dataset(dataset)
    data.dataset_info(dataset, **(dataset_args or {}))   # unknown keys, a bad normalize
    method_cls = methods.get_method(method)
    budget = budget or {}
    check_budget(method_cls, budget)
    train = check_dataclass_args(TrainConfig, train, "train")
    config = TrainConfig(**train)                        # its own checks: choices and ranges
    if config.epochs == 0 and init is None:
        raise ValueError("train.epochs=0 trains nothing and there is no `init` to evaluate; set train.epochs >= 1 "
                         "(or init: a model to evaluate as it is)")
    method_args = check_dataclass_args(method_cls.Args, method_args, "method_args")
    args = method_cls.Args(**method_args)                # the Args' own checks (ranges, choices, combinations)
    method_cls.check(args, budget, config)               # args with the budget and the run's length
    return train, method_args


def find_cycle(edges):
    """[a, b, ..., a]: rows that start from each other, following `edges` (row -> rows it starts
    from); None if there is no such cycle."""
    done, path = set(), []

    def visit(node):
        path.append(node)
        for nxt in edges.get(node, ()):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done and (found := visit(nxt)):
                return found
        done.add(path.pop())
        return None

    for node in edges:
        if node not in done and (found := visit(node)):
            return found
    return None


def _expand_grid(name, row):
    """One concrete row per combination of the grid's values. A key is a dotted settings path
    (`budget.sparsity`); `label.x` only names rows; `a,b` zips: its values are [a, b] lists."""
    grid = row.get("grid")
    if not grid:
        yield name, row
        return
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        concrete = {k: v for k, v in row.items() if k != "grid"}
        labels = {}
        for key, value in zip(keys, combo):
            parts = key.split(",")
            values = value if len(parts) > 1 else [value]
            if len(values) != len(parts):
                raise ValueError(f"grid key {key!r} zips {len(parts)} settings but got {value!r}")
            for path, v in zip(parts, values):
                *parents, leaf = path.strip().split(".")
                labels[leaf] = v
                if parents == ["label"]:
                    continue
                node = concrete
                for p in parents:
                    node[p] = dict(node.get(p) or {})
                    node = node[p]
                node[leaf] = v
        try:
            if isinstance(concrete.get("init"), str):  # a chain of grid rows: init: "{model}-train-{sparsity}"
                concrete["init"] = concrete["init"].format(**labels)
            yield name.format(**labels), concrete
        except KeyError as err:
            raise ValueError(f"row name or init uses {{{err.args[0]}}}, which is not a grid key") from None


def _mapped(mapping, name):
    mapping = mapping or {}
    return mapping.get(name, mapping.get("*", name))


class PaperTable:
    def __init__(self, path, schema_path=ROOT / "config" / "paper.schema.yaml"):
        self.path = Path(path)
        self.name = self.path.stem
        try:
            self.doc = yaml.load(self.path.read_text(), Loader=_UniqueKeyLoader)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark else ""
            raise TableError(f"{self._rel()}: not valid YAML{line}: {getattr(err, 'problem', err)}") from None
        if not isinstance(self.doc, dict):
            what = "is empty" if self.doc is None else f"holds a {type(self.doc).__name__}, not a mapping"
            raise TableError(f"{self._rel()}: the file {what}; a paper table maps title, source, scales and rows "
                             f"(see config/papers/gmp.yaml)")
        errors = sorted(_validator(str(schema_path)).iter_errors(self.doc),
                        key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
        if errors:
            row, msg = _schema_error(errors[0])
            self._fail(row, msg)

    def _rel(self):
        try:
            return str(self.path.resolve().relative_to(ROOT))
        except ValueError:
            return str(self.path)

    def _fail(self, row, msg, grid=None):
        where = f"row '{row}'" + (f" (grid row '{grid}')" if grid else "") + ": " if row is not None else ""
        raise TableError(f"{self._rel()}: {where}{msg}")

    def rows(self, scale):
        """(name, row, the name as written) for every row at `scale`, grids expanded; a row's
        `scales.<scale>.grid` replaces its grid there (e.g. other strengths on a laptop)."""
        for written, row in self.doc["rows"].items():
            scale_grid = ((row.get("scales") or {}).get(scale) or {}).get("grid")
            if scale_grid:
                row = {**row, "grid": scale_grid}
            try:
                for name, concrete in _expand_grid(written, row):
                    yield name, concrete, written
            except ValueError as err:
                self._fail(written, str(err))

    def specs(self, scale, seeds, data_dir="data/downloads", device="auto", table_seeds=True, parity=False):
        """Every row of this table that exists at `scale`, as one RunSpec per seed; `parity_only`
        rows (the reference code's own recipe, run by the parity target) only with `parity`."""
        import models   # here, not at the top: it imports torch (see cached_expand)
        scale_doc = self.doc["scales"][scale]
        if table_seeds:   # a table's own repeats (the leaderboard's) replace the config's
            seeds = scale_doc.get("seeds", seeds)
        if self.doc.get("pretrain") is not None:
            self.pretrain_train(scale)
        out, starts_from, written_as = [], {}, {}
        names = {name for name, row, _ in self.rows(scale) if not row.get("at_scales") or scale in row["at_scales"]}
        for name in ((self.doc.get("reference") or {}).get(scale) or {}):
            if name not in names:       # e.g. a row renamed after its reference run
                self._fail(None, f"reference.{scale}: {name!r} is not a row of this table at scale {scale}; "
                                 f"{suggest(name, names)} (rename the entry with its row)")
        for name, row, written in self.rows(scale):
            if row.get("at_scales") and scale not in row["at_scales"] or row.get("parity_only") and not parity:
                continue
            try:
                spec = self._resolve(name, row, scale, scale_doc)
                if spec["init"] == name:
                    raise ValueError("a row cannot start from itself (init)")
                transfer = spec["budget"].get("transfer")
                if transfer is not None and transfer not in names:
                    raise ValueError(f"budget.transfer: {transfer!r} is not a row of this table at scale {scale}; "
                                     f"{suggest(transfer, names)}")
                if spec["init"] == models.TORCHVISION_INIT and not models.has_torchvision_weights(spec["model"]):
                    raise ValueError(f"init: {models.TORCHVISION_INIT} has no published weights for model "
                                     f"{spec['model']!r}; start it from `pretrain` or a row")
                if spec["init"] not in (None, "pretrain", models.TORCHVISION_INIT) and spec["init"] not in names:
                    raise ValueError(f"init: {spec['init']!r} is neither `pretrain`, `{models.TORCHVISION_INIT}` nor "
                                     f"a row of this table at scale {scale}; {suggest(spec['init'], names)}")
            except (ValueError, KeyError) as err:
                self._fail(name, err.args[0] if err.args else str(err), grid=written if name != written else None)
            starts_from[name] = {r: kind for r, kind in ((spec["init"], "init"), (transfer, "budget.transfer"))
                                 if r in names}
            written_as[name] = written
            for seed in seeds:
                out.append(RunSpec(seed=seed, data_dir=data_dir, device=device, **spec))
        cycle = find_cycle(starts_from)
        if cycle:   # Snakemake would only say "cyclic graph", naming no row
            chain = " -> ".join(f"'{a}' ({starts_from[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> '{cycle[-1]}'"
            self._fail(cycle[0], f"rows start from each other in a cycle: {chain}; start one of them from "
                                 f"`pretrain`, another model or nothing",
                       grid=written_as[cycle[0]] if written_as[cycle[0]] != cycle[0] else None)
        return out

    def _resolve(self, name, row, scale, scale_doc):
        import data, models   # here, not at the top: they import torch (see cached_expand)
        settings = {k: v for k, v in row.items()
                    if k not in ("scales", "at_scales", "parity_only", "published", "notes")}
        scale_settings = {k: v for k, v in scale_doc.items() if k in ("train", "method_args", "model_args",
                                                                      "dataset_args")}
        row_scale = {k: v for k, v in ((row.get("scales") or {}).get(scale) or {}).items() if k != "grid"}
        merged = _deep_merge(_deep_merge(_deep_merge(self.doc.get("defaults", {}), scale_settings), settings),
                             row_scale)
        for field_name in ("method", "model", "dataset"):
            if field_name not in merged:
                raise ValueError(f"no {field_name} given; set `{field_name}:` in the row or in `defaults:`")
        models.check_model(merged["model"])       # the row's own names too: a scale's "*" would hide a typo
        data.check_dataset(merged["dataset"])
        model = _mapped(scale_doc.get("models"), merged["model"])
        dataset = _mapped(scale_doc.get("datasets"), merged["dataset"])
        budget = merged.get("budget") or {}
        train, method_args = check_settings(merged["method"], model, dataset, merged.get("train"),
                                            merged.get("method_args"), merged.get("model_args"),
                                            merged.get("dataset_args"), budget, merged.get("init"))
        if merged.get("init") == "pretrain" and self.doc.get("pretrain") is None:
            raise ValueError("init: pretrain needs a `pretrain:` section in this paper table")
        notes = _notes(scale_doc, row)
        return dict(scale=scale, paper=self.name, row=name, method=merged["method"], model=model,
                    dataset=dataset, train=train, model_args=merged.get("model_args") or {},
                    dataset_args=merged.get("dataset_args") or {}, method_args=method_args,
                    budget=budget, init=merged.get("init"), published=row.get("published") or {},
                    notes=notes)

    def pretrain_train(self, scale):
        """The shared dense model's `train` settings at `scale`, checked."""
        pre = self.doc["pretrain"]
        train = _deep_merge(pre.get("train"), ((pre.get("scales") or {}).get(scale) or {}).get("train"))
        try:
            train = check_dataclass_args(TrainConfig, train, "train")
            if TrainConfig(**train).epochs == 0:
                raise ValueError("train.epochs=0 would leave the shared dense model untrained; set it >= 1")
        except ValueError as err:
            self._fail(None, f"pretrain: {err}")
        return train

    def annotations(self, scale):
        """{row: (published, notes)} at `scale`: what tables.csv shows beside a row's results. The
        aggregation reads them from the table as it is then, so a corrected published value or
        note shows without re-running anything."""
        scale_doc = self.doc["scales"].get(scale) or {}
        return {name: (row.get("published") or {}, _notes(scale_doc, row)) for name, row, _ in self.rows(scale)}

    def parity_specs(self, scale, data_dir="data/downloads", device="auto"):
        """The runs the `reference` checks at `scale` need (the parity target): every row with a
        reference entry and the rows it starts from or takes its budget from, at as many seeds as
        the reference code was run with."""
        entries = (self.doc.get("reference") or {}).get(scale) or {}
        if not entries:
            return []
        seeds = list(range(max(reference_seed_count(e) for e in entries.values())))
        by_row = {s.row: s for s in self.specs(scale, seeds[:1], data_dir, device, parity=True)}
        needed, todo = set(), list(entries)
        while todo:
            row = todo.pop()
            if row in needed or row not in by_row:
                continue
            needed.add(row)
            spec = by_row[row]
            todo += [r for r in (spec.init, spec.budget.get("transfer")) if r not in (None, "pretrain", "torchvision")]
        return [s for s in self.specs(scale, seeds, data_dir, device, table_seeds=False, parity=True)
                if s.row in needed]

    def pretrain_spec(self, spec: RunSpec) -> RunSpec:
        """The shared dense model that `spec` starts from: same model, data, scale and seed."""
        return RunSpec(scale=spec.scale, paper=spec.paper, row=pretrain_row(spec), seed=spec.seed,
                       method="dense", model=spec.model, dataset=spec.dataset, train=self.pretrain_train(spec.scale),
                       model_args=spec.model_args, dataset_args=spec.dataset_args,
                       data_dir=spec.data_dir, device=spec.device)


def _notes(scale_doc, row):
    return "; ".join(filter(None, [scale_doc.get("note"), row.get("notes")]))


def reference_seed_count(entry):
    """How many seeds the reference code ran for one `reference:` entry (of the row or its levels)."""
    counts = [len(entry.get("seeds") or []), (entry.get("top1") or {}).get("n", 0)]
    counts += [(level.get("top1") or {}).get("n", 0) for level in (entry.get("levels") or {}).values()]
    return max(counts)


def pretrain_row(spec):
    """Runs share a dense model when model, data and their options agree."""
    extra = RunSpec(scale="", paper="", row="", seed=0, method="", model="", dataset="", train={},
                    model_args=spec.model_args, dataset_args=spec.dataset_args).result_fingerprint()[:6] \
        if (spec.model_args or spec.dataset_args) else ""
    return "pretrain-" + "-".join(filter(None, [spec.model, spec.dataset, extra]))


def load_tables(papers, papers_dir=PAPERS_DIR):
    known = paper_names(papers_dir)
    tables = {}
    for p in papers:
        if p not in known:
            raise TableError(f"config: papers: unknown paper {p!r}; {suggest(p, known)} "
                             f"(tables live in {Path(papers_dir).name}/<paper>.yaml)")
        tables[p] = PaperTable(Path(papers_dir) / f"{p}.yaml")
    return tables


def runs_for(config, papers_dir=PAPERS_DIR, scale=None):
    """(tables, runs) for the configured papers at `scale` (default: the configured one)."""
    tables = load_tables(config["papers"], papers_dir)
    runs = []
    for table in tables.values():
        runs += table.specs(scale or config["scale"], config["seeds"], config["data_dir"], config["device"])
    return tables, runs


# -- the workflow's runs, kept between Snakemake starts ----------------------------------------------
# what an expansion reads besides the config: the tables and their schema, STR's budget files, and the
# code that checks and expands them (the registries' argument defaults become run settings)
EXPANSION_INPUTS = (("config/papers", "*.yaml"), ("config", "paper.schema.yaml"), ("budgets", "*"),
                    ("core", "*.py"), ("data", "*.py"), ("methods", "*.py"), ("models", "*.py"), ("harness", "tables.py"))
KEPT_EXPANSIONS = 64   # the most recently used ones; older ones are deleted


@dataclass(frozen=True)
class Expansion:
    """What the workflow needs of the tables at one scale: the enabled tables' runs, the parity
    target's runs, and {(paper, row, seed): the shared dense model's spec} of every run of either
    that starts from `pretrain`."""
    runs: list
    parity: list
    pretrain: dict


def expand(config, scale=None, papers_dir=PAPERS_DIR):
    scale = scale or config["scale"]
    tables, runs = runs_for(config, papers_dir, scale)
    parity = [s for t in tables.values() for s in t.parity_specs(scale)]
    pretrain = {(s.paper, s.row, str(s.seed)): tables[s.paper].pretrain_spec(s)
                for s in [*parity, *runs] if s.init == "pretrain"}
    return Expansion(runs, parity, pretrain)


def cached_expand(config, scale=None):
    """expand(), kept in the harness's cache folder under a digest of all it reads (EXPANSION_INPUTS,
    the config, the scale, torch's and torchvision's versions). Snakemake parses the workflow at every
    start (a dry run, each cluster job), and checking the rows imports torch with the registries: 4 of
    a dry run's 8.6 s. A table that fails is not kept: it fails the same way next time."""
    path = cache_dir() / "expansions" / f"{_expansion_digest(config, scale)}.pickle"
    try:
        expansion = pickle.loads(path.read_bytes())
        os.utime(path)   # recently used: kept
        return expansion
    except Exception:   # none yet, or unreadable (cut short, another Python): expand again
        pass
    expansion = expand(config, scale)
    try:
        io.save_bytes(pickle.dumps(expansion), path)
        for old in sorted(path.parent.glob("*.pickle"), key=lambda f: f.stat().st_mtime,
                          reverse=True)[KEPT_EXPANSIONS:]:
            old.unlink(missing_ok=True)
    except OSError:   # a read-only cache folder (expand every time), or an entry another start removed
        pass
    return expansion


def _expansion_digest(config, scale):
    h = hashlib.sha256(json.dumps([config, scale], sort_keys=True, default=repr).encode())
    for package in ("torch", "torchvision"):
        try:
            h.update(f"{package}={importlib.metadata.version(package)}".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    for folder, pattern in EXPANSION_INPUTS:
        for f in sorted(f for f in (ROOT / folder).glob(pattern) if f.is_file()):
            h.update(f"\0{f.relative_to(ROOT)}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:32]
