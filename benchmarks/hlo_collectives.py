"""Read the collectives out of a compiled XLA HLO module (``jit(f).lower(...).compile().as_text()``).

Two questions are answered from the text alone, with no device needed:

* how many bytes a partitioned step communicates, by collective kind (the sum of operand
  sizes of every all-reduce / all-gather / reduce-scatter / all-to-all / collective-permute,
  multiplied by the trip counts of the loops around it), and
* which ``while`` loops contain a collective, each loop labelled with the Python function
  that built it (from the module's stack-frame table), so that one can check that the
  gated-delta-rule recurrence and the sleep passes run without communication.

The parser understands the textual HLO printed by XLA (computations ``%name (...) -> ... {``,
instructions ``%x = shape opcode(operands), attr=...``, and the ``FileNames`` /
``FunctionNames`` / ``FileLocations`` / ``StackFrames`` tables).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPE_BYTES = {
    "pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1,
    "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}
_ARRAY_SHAPE = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_COMPUTATION_HEADER = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_CALLED = re.compile(r"\b(?:condition|body|to_apply|calls|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_STACK_FRAME = re.compile(r"\bstack_frame_id=(\d+)")
_OP_NAME = re.compile(r'\bop_name="([^"]*)"')


def shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO shape (array or tuple), e.g. ``f32[4,8]{1,0}`` -> 128."""
    total = 0
    for dtype, dims in _ARRAY_SHAPE.findall(shape_text):
        if dtype not in _DTYPE_BYTES:
            continue   # token[] and the like carry no data
        count = 1
        for d in dims.split(","):
            if d:
                count *= int(d)
        total += count * _DTYPE_BYTES[dtype]
    return total


def _split_operands(rest: str) -> tuple[str, str]:
    """``rest`` starts right after ``opcode(``: return (operand text, attribute text)."""
    depth = 1
    for i, ch in enumerate(rest):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
            if depth == 0:
                return rest[:i], rest[i + 1:]
    return rest, ""


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    shape: str
    operands: list[str]
    attrs: str
    called: list[str]

    @property
    def collective_kind(self) -> str | None:
        op = self.opcode[:-len("-start")] if self.opcode.endswith("-start") else self.opcode
        return op if op in COLLECTIVE_KINDS else None

    @property
    def trip_count(self) -> int | None:
        m = _TRIP_COUNT.search(self.attrs)
        return int(m.group(1)) if m else None

    @property
    def stack_frame_id(self) -> int | None:
        m = _STACK_FRAME.search(self.attrs)
        return int(m.group(1)) if m else None

    @property
    def op_name(self) -> str:
        m = _OP_NAME.search(self.attrs)
        return m.group(1) if m else ""


@dataclasses.dataclass
class WhileLoop:
    """One ``while`` of the module: where it came from and what its body communicates."""

    name: str
    op_name: str               # JAX name stack, e.g. "jit(step)/transpose(jvp(SleepLM))/while"
    function: str              # Python function that called lax.scan / fori_loop / while_loop
    file: str
    line: int | None
    trip_count: int | None
    collectives: dict[str, int]   # kind -> count of collective instructions in the body (transitively)
    body_bytes: dict[str, int]    # kind -> bytes per iteration (transitively, nested loops multiplied)

    @property
    def has_collectives(self) -> bool:
        return any(self.collectives.values())

    @property
    def in_backward_pass(self) -> bool:
        """True for loops of the gradient computation (JAX names them ``transpose(...)``)."""
        return "transpose(" in self.op_name


class HloModule:
    """Parsed textual HLO module."""

    def __init__(self, text: str):
        self.computations: dict[str, list[Instruction]] = {}
        self.entry: str | None = None
        self._tables: dict[str, dict[int, str]] = {}
        self._parse(text)

    # ---------------------------------------------------------------- parsing
    def _parse(self, text: str) -> None:
        current = None
        table = None
        for line in text.splitlines():
            if current is None:
                header = _COMPUTATION_HEADER.match(line)
                if header:
                    current = header.group(2)
                    self.computations[current] = []
                    if header.group(1):
                        self.entry = current
                    table = None
                    continue
                stripped = line.strip()
                if stripped in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
                    table = stripped
                    self._tables[table] = {}
                    continue
                if table and stripped:
                    idx, _, value = stripped.partition(" ")
                    if idx.isdigit():
                        self._tables[table][int(idx)] = value
                    continue
                table = None
                continue
            if line.startswith("}"):
                current = None
                continue
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            name, shape, opcode, rest = m.group(2), m.group(3), m.group(4), m.group(5)
            operand_text, attrs = _split_operands(rest)
            operands = re.findall(r"%([\w.\-]+)", operand_text)
            called = _CALLED.findall(attrs)
            for group in _BRANCHES.findall(attrs):
                called += re.findall(r"%([\w.\-]+)", group)
            self.computations[current].append(
                Instruction(name, opcode, shape, operands, attrs, called))
        if self.entry is None:
            raise ValueError("HloModule: no ENTRY computation found; pass the text of a compiled "
                             "module (jax.jit(f).lower(...).compile().as_text())")

    # ---------------------------------------------------------------- source locations
    def _frame_location(self, frame_id: int | None) -> tuple[str, str, int | None]:
        """(function, file, line) of the innermost Python frame of ``frame_id``."""
        frames, locations = self._tables.get("StackFrames", {}), self._tables.get("FileLocations", {})
        if frame_id is None or frame_id not in frames:
            return "?", "?", None
        loc_id = int(re.search(r"file_location_id=(\d+)", frames[frame_id]).group(1))
        loc = locations.get(loc_id, "")
        fields = dict(re.findall(r"(\w+)=(\d+)", loc))
        file = self._tables.get("FileNames", {}).get(int(fields.get("file_name_id", -1)), "?")
        function = self._tables.get("FunctionNames", {}).get(int(fields.get("function_name_id", -1)), "?")
        return function.strip('"'), file.strip('"'), int(fields["line"]) if "line" in fields else None

    # ---------------------------------------------------------------- collectives
    def _operand_bytes(self, computation: str, instr: Instruction) -> int:
        shapes = {i.name: i.shape for i in self.computations[computation]}
        return sum(shape_bytes(shapes.get(op, "")) for op in instr.operands)

    def bytes_by_kind(self, computation: str | None = None, *, include_loops: bool = True,
                      _memo=None) -> dict[str, int]:
        """Bytes communicated by one execution of ``computation`` (default: the entry), by
        collective kind; loop bodies count ``trip_count`` times (once if unknown), or not at
        all with ``include_loops=False``."""
        memo = {} if _memo is None else _memo
        computation = self.entry if computation is None else computation
        if computation in memo:
            return memo[computation]
        totals: dict[str, int] = defaultdict(int)
        for instr in self.computations.get(computation, []):
            kind = instr.collective_kind
            if kind:
                totals[kind] += self._operand_bytes(computation, instr)
            if instr.opcode == "while" and not include_loops:
                continue
            repeat = (instr.trip_count or 1) if instr.opcode == "while" else 1
            for callee in instr.called:
                for k, v in self.bytes_by_kind(callee, include_loops=include_loops, _memo=memo).items():
                    totals[k] += v * repeat
        memo[computation] = dict(totals)
        return memo[computation]

    def collective_counts(self, computation: str | None = None, _memo=None) -> dict[str, int]:
        """Number of collective instructions in ``computation`` and everything it calls."""
        memo = {} if _memo is None else _memo
        computation = self.entry if computation is None else computation
        if computation in memo:
            return memo[computation]
        counts: dict[str, int] = defaultdict(int)
        memo[computation] = counts
        for instr in self.computations.get(computation, []):
            if instr.collective_kind:
                counts[instr.collective_kind] += 1
            for callee in instr.called:
                for k, v in self.collective_counts(callee, memo).items():
                    counts[k] += v
        return dict(counts)

    def while_loops(self) -> list[WhileLoop]:
        """Every ``while`` reachable from the entry, with its origin and body collectives."""
        loops, seen, stack = [], set(), [self.entry]
        count_memo, bytes_memo = {}, {}
        while stack:
            comp = stack.pop()
            if comp in seen or comp not in self.computations:
                continue
            seen.add(comp)
            for instr in self.computations[comp]:
                stack.extend(instr.called)
                if instr.opcode != "while":
                    continue
                body = re.search(r"\bbody=%([\w.\-]+)", instr.attrs).group(1)
                function, file, line = self._frame_location(instr.stack_frame_id)
                loops.append(WhileLoop(
                    name=instr.name, op_name=instr.op_name, function=function, file=file, line=line,
                    trip_count=instr.trip_count,
                    collectives=self.collective_counts(body, count_memo),
                    body_bytes=self.bytes_by_kind(body, _memo=bytes_memo)))
        return loops


def loops_in(loops: list[WhileLoop], file_substrings=(), functions=()) -> list[WhileLoop]:
    """Loops whose originating file contains one of ``file_substrings`` or whose function is
    one of ``functions``."""
    return [lp for lp in loops
            if any(s in lp.file for s in file_substrings) or lp.function in functions]
