"""The package's import graph: the method never imports an experiment, the
models never import the converters, no cycles.

The graph is read from the source with `ast` (nothing is imported), counting
every import statement, also those inside functions: a lazy import is still
a dependency. `gmseg.experiments.*` are the experiment drivers; every other
module of `gmseg/` is the method.
"""
import ast
import pathlib

from conftest import REPO

EXPERIMENTS = "gmseg.experiments"
MODELS = "gmseg.models"
CONVERT = "gmseg.convert"


def module_files(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every .py under `root` (the package dir)."""
  out = {}
  for path in sorted(root.rglob("*.py")):
    parts = (package,) + path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def import_graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
  """Module -> the package's modules it imports (anywhere in its body).

  `from a import b` counts as importing the module `a.b` when that is a
  module of the package, else `a` itself; relative imports are resolved.
  """
  files = module_files(root, package)
  graph = {}
  for name, path in files.items():
    is_pkg = path.name == "__init__.py"
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          here = name.split(".") if is_pkg else name.split(".")[:-1]
          here = here[:len(here) - (node.level - 1)]
          base = ".".join(here + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                   for a in node.names]
      else:
        continue
      for target in targets:
        # `import gmseg.a.b` depends on gmseg.a.b; keep the longest known prefix.
        parts = target.split(".")
        while parts and ".".join(parts) not in files:
          parts.pop()
        if parts and ".".join(parts) != name:
          deps.add(".".join(parts))
    graph[name] = deps
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle (as a closed path a -> ... -> a) per strongly connected component
  with more than one module (Tarjan's algorithm, iterative)."""
  index, low, on_stack, stack, comps = {}, {}, set(), [], []
  for start in sorted(graph):
    if start in index:
      continue
    work = [(start, iter(sorted(graph[start])))]
    index[start] = low[start] = len(index)
    stack.append(start)
    on_stack.add(start)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph.get(child, ())))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        comp = []
        while True:
          member = stack.pop()
          on_stack.discard(member)
          comp.append(member)
          if member == node:
            break
        if len(comp) > 1:
          comps.append(sorted(comp))
  return [_closed_path(graph, comp) for comp in comps]


def _closed_path(graph, comp: list[str]) -> list[str]:
  """A shortest cycle comp[0] -> ... -> comp[0] inside the component (breadth-first)."""
  members, start = set(comp), comp[0]
  parent, frontier = {start: None}, [start]
  while frontier:
    nxt = []
    for node in frontier:
      for child in sorted(graph[node] & members):
        if child == start:
          path = [node]
          while parent[path[-1]] is not None:
            path.append(parent[path[-1]])
          return path[::-1] + [start]
        if child not in parent:
          parent[child] = node
          nxt.append(child)
    frontier = nxt
  return comp


def _inside(package: str):
  return lambda m: m == package or m.startswith(package + ".")


def method_imports_of_experiments(graph: dict[str, set[str]],
                                  experiments: str = EXPERIMENTS) -> list[str]:
  """'a imports b' for every module a outside `experiments` importing one inside."""
  is_exp = _inside(experiments)
  return sorted(f"{m} imports {d}" for m, deps in graph.items() if not is_exp(m)
                for d in deps if is_exp(d))


def imports_between(graph: dict[str, set[str]], lower: str, upper: str) -> list[str]:
  """'a imports b' for every module a of package `lower` importing a module b
  of `upper` that itself imports `lower` (b sits above `lower`; b's that do
  not, plain readers like torch_zip, sit below it and are allowed)."""
  is_lower, is_upper = _inside(lower), _inside(upper)
  above = {d for d, deps in graph.items() if is_upper(d) and any(map(is_lower, deps))}
  return sorted(f"{m} imports {d}" for m, deps in graph.items() if is_lower(m)
                for d in deps if d in above)


def _graph():
  return import_graph(REPO / "gmseg", "gmseg")


def test_method_does_not_import_experiments():
  bad = method_imports_of_experiments(_graph())
  assert not bad, ("The method (gmseg/ outside gmseg/experiments/) must not import "
                   "experiment drivers; move the shared code into the method: "
                   + "; ".join(bad))


def test_models_do_not_import_converters():
  """Converters map foreign checkpoints to model params (they import the
  models), so the models must not import them; a name -> factory registry
  that needs both sits above (gmseg.generator_registry). Plain file readers
  of gmseg/convert/ (torch_zip, torch_legacy) import no model: models may
  use them."""
  bad = imports_between(_graph(), MODELS, CONVERT)
  assert not bad, ("gmseg/models/ must not import gmseg/convert/ (register loaders in "
                   "gmseg.generator_registry instead): " + "; ".join(bad))


def test_no_import_cycles():
  found = cycles(_graph())
  assert not found, ("Import cycles in gmseg/ (each layer should import only the layers "
                     "below it): " + "; ".join(" -> ".join(c) for c in found))


def test_graph_sees_the_known_edges():
  """The walker finds top-level, lazy (in-function) and relative imports."""
  g = _graph()
  assert "gmseg.build" in g["gmseg.annotate"]
  assert "gmseg.experiments.faces" in g["gmseg.experiments.benchmark"]
  assert "gmseg.models.generators" in g["gmseg.models.stylegan2"]
  # The registry's lazy imports of the converters are seen.
  assert {"gmseg.convert.stylegan1_pt", "gmseg.convert.stylegan2_pkl",
          "gmseg.models.dcgan"} <= g["gmseg.generator_registry"]
  # benchmark imports annotate only inside a function.
  assert "gmseg.annotate" in g["gmseg.experiments.benchmark"]
  assert len(g) > 40


def test_checker_catches_a_cycle_and_an_upward_import(tmp_path):
  """The checks themselves fail on a small package with both faults."""
  pkg = tmp_path / "pkg"
  (pkg / "experiments").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "experiments" / "__init__.py").write_text("")
  (pkg / "experiments" / "run.py").write_text("from pkg import a\n")
  (pkg / "a.py").write_text("from pkg import b\n")
  (pkg / "b.py").write_text("def f():\n  from . import c\n")  # lazy + relative
  (pkg / "c.py").write_text("import pkg.a\nfrom pkg.experiments import run\n")
  g = import_graph(pkg, "pkg")
  assert cycles(g) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
  assert method_imports_of_experiments(g, "pkg.experiments") == [
      "pkg.c imports pkg.experiments.run"]


def test_checker_catches_a_model_importing_a_converter(tmp_path):
  """A model may import a plain reader of convert/, not a converter (one
  that imports a model)."""
  pkg = tmp_path / "pkg"
  for sub in ("models", "convert"):
    (pkg / sub).mkdir(parents=True)
    (pkg / sub / "__init__.py").write_text("")
  (pkg / "__init__.py").write_text("")
  (pkg / "convert" / "reader.py").write_text("import zipfile\n")
  (pkg / "convert" / "conv.py").write_text("from pkg.convert import reader\n"
                                           "from pkg.models import base\n")
  (pkg / "models" / "base.py").write_text("")
  (pkg / "models" / "net.py").write_text("from pkg.convert import reader\n"
                                         "def load():\n  from pkg.convert import conv\n")
  g = import_graph(pkg, "pkg")
  assert imports_between(g, "pkg.models", "pkg.convert") == [
      "pkg.models.net imports pkg.convert.conv"]
