"""Kernels per event: top-level operations of the compiled KMC event loop, from XLA's HLO text.

On XLA's CPU (and GPU) runtime each top-level instruction of a loop body is one kernel launch
(a fusion, a copy, a scatter that was not fused, a nested loop), so their number per event sets
the per-event floor. Trivial instructions (parameters, tuples, constants, bitcasts) are free and
not counted; a nested ``while`` counts its own body times its known trip count.
"""

from __future__ import annotations

import re

_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([\w\-]+)\(")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def computations(hlo_text: str) -> dict[str, list[str]]:
    """Instruction lines of every computation, by name (headers start at column 0)."""
    comps, name = {}, None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            name = header.group(1)
            comps[name] = []
        elif name is not None and line.strip() not in ("", "}"):
            comps[name].append(line)
    return comps


def instructions(lines: list[str]) -> list[tuple[str, str, str]]:
    """(opcode, result shape, line) of each instruction line."""
    out = []
    for line in lines:
        m = _INSTRUCTION.match(line)
        if m:
            out.append((m.group(2), m.group(1), line))
    return out


def count_kernels(comps: dict, body: str) -> dict:
    """``{"ops": kernels per execution of ``body``, "fusions": those that are fusions,
    "copies": copies}``, nested loops expanded by their known trip counts."""
    total = {"ops": 0, "fusions": 0, "copies": 0}
    for op, _, line in instructions(comps[body]):
        if op in _FREE:
            continue
        if op == "while":
            sub = re.search(r"body=%?([\w.\-]+)", line).group(1)
            trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
            inner = count_kernels(comps, sub)
            for key in total:
                total[key] += (int(trips.group(1)) if trips else 1) * inner[key]
            continue
        total["ops"] += 1
        total["fusions"] += op == "fusion"
        total["copies"] += op == "copy"
    return total


def event_loop_kernels(hlo_text: str, species_shape: tuple[int, ...]) -> dict:
    """Kernels per event of a compiled ``engine.run``: the loop nested in another loop's body
    (the event loop inside the chunk loop) whose carried state holds the species array."""
    comps = computations(hlo_text)
    parent_of = {}
    for name, lines in comps.items():
        for op, shape, line in instructions(lines):
            if op == "while":
                parent_of[re.search(r"body=%?([\w.\-]+)", line).group(1)] = (name, shape)
    species = "s8[" + ",".join(str(d) for d in species_shape) + "]"
    found = [b for b, (parent, shape) in parent_of.items() if parent in parent_of and species in shape]
    if len(found) != 1:
        raise RuntimeError(f"expected one event loop in the compiled run, found {len(found)}")
    return count_kernels(comps, found[0])
