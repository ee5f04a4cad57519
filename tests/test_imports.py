"""The import graph of the `exporter` package has no circle, TYPE_CHECKING imports included.

A circle hidden behind `if TYPE_CHECKING:` still ties two modules together (neither can be
understood, typed or moved without the other), and turns into an ImportError the day someone
needs the name at run time. grimp reads every import statement, as Python would see it, without
importing anything.
"""

from __future__ import annotations

import itertools

import grimp


def _components(graph: grimp.ImportGraph) -> set[frozenset[str]]:
    """The sets of modules that import one another, directly or through others."""
    on_a_circle = {
        module
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if graph.chain_exists(importer=imported, imported=module)
    }
    return {
        frozenset(
            other
            for other in on_a_circle
            if other == module
            or (
                graph.chain_exists(importer=module, imported=other)
                and graph.chain_exists(importer=other, imported=module)
            )
        )
        for module in on_a_circle
    }


def _shortest_cycle(graph: grimp.ImportGraph, component: frozenset[str]) -> list[str]:
    """One shortest circle through a component, as the modules in import order."""
    best: list[str] = []
    for importer in sorted(component):
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & component):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None and (not best or len(back) + 1 < len(best)):
                best = [importer, *back]
    return best


def _describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """`a -> b (a.py line 12: from ...) -> ... -> a`, one step a line."""
    steps = []
    for importer, imported in itertools.pairwise(cycle):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = (
            f"line {details[0]['line_number']}: {details[0]['line_contents']}" if details else ""
        )
        steps.append(f"  {importer} -> {imported}   ({where})")
    return "\n".join(steps)


def test_the_exporter_package_has_no_import_cycle() -> None:
    """Every module can be read, typed and moved without the modules that import it."""
    graph = grimp.build_graph("exporter", exclude_type_checking_imports=False, cache_dir=None)
    assert graph.find_modules_directly_imported_by("exporter.http"), "grimp saw no imports"
    circles = [
        f"{', '.join(sorted(component))} import one another, as in:\n"
        + _describe(graph, _shortest_cycle(graph, component))
        for component in sorted(_components(graph), key=sorted)
    ]
    assert not circles, "import cycles in exporter:\n" + "\n".join(circles)
