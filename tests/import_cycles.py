"""Print, as JSON, every group of worldtune modules that import each other (Tarjan's algorithm on
grimp's import graph, which includes imports inside functions)."""

from __future__ import annotations

import json

import grimp


def import_cycles(package: str = "worldtune") -> list[list[str]]:
    graph = grimp.build_graph(package, cache_dir=None)
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            group: list[str] = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in order:
            visit(module)
    return sorted(cycles)


if __name__ == "__main__":
    print(json.dumps(import_cycles()))
