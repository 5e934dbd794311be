"""The layers of docs/architecture.md: a module imports only from its own layer and those below."""
import ast

from tests.conftest import ROOT

LAYERS = {   # lowest first
    "ground": ["core"],
    "plugins": ["data", "models", "methods"],
    "engine": ["harness.building", "harness.distributed", "harness.trainer", "harness.deploy", "harness.evaluate", "harness.warm",
               "harness.tables"],
    "reporting": ["harness.aggregate", "harness.checks", "harness.compare", "harness.plots",
                  "harness.paper_figures", "harness.leaderboard", "harness.figures"],
    "entry": ["harness.__main__"],
}
RANK = {module: i for i, (_, modules) in enumerate(LAYERS.items()) for module in modules}
PACKAGES = ("core", "harness", "methods", "models", "data")


def unit(module):
    """The layer unit of a module: harness.x itself; the ground and each plugin package as a whole."""
    parts = module.split(".")
    return module if parts[0] == "harness" else parts[0]


def imports(path):
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "harness":
                found |= {f"harness.{a.name}" for a in node.names}
            elif node.module.split(".")[0] in PACKAGES:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    return {unit(m) for m in found} - {"harness"}


def test_every_module_has_a_layer_and_imports_only_downwards():
    modules = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py")) if p.name != "__init__.py"]
    upward = []
    for path in modules:
        me = unit(".".join(path.relative_to(ROOT).with_suffix("").parts))
        assert me in RANK, f"{path.relative_to(ROOT)} has no layer in docs/architecture.md (LAYERS here)"
        upward += [f"{me} imports {dep}" for dep in imports(path) if dep != me and RANK[dep] > RANK[me]]
    assert not upward, upward
