"""The HLO collective parser of benchmarks/bench_comm.py and the multi-device tests, on a
hand-written module (no device, no compile)."""

from __future__ import annotations

from benchmarks import hlo_collectives

_HLO = """HloModule jit_f, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

FileNames
1 "/repo/sleepjax/ops/gdr_recurrent.py"
2 "/repo/sleepjax/models/sleep_lm.py"

FunctionNames
1 "scan_tokens"
2 "sleep_passes"

FileLocations
1 {file_name_id=1 function_name_id=1 line=10 end_line=10 column=1 end_column=1}
2 {file_name_id=2 function_name_id=2 line=20 end_line=20 column=1 end_column=1}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

%inner_body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %v = f32[8]{0} get-tuple-element(%p), index=1
  %m = f32[8]{0} multiply(%v, %v)
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %m)
}

%inner_cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%outer_body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %w = (s32[], f32[8]{0}) while(%p), condition=%inner_cond, body=%inner_body, metadata={op_name="w" stack_frame_id=1}, backend_config={"known_trip_count":{"n":"4"}}
  %v = f32[8]{0} get-tuple-element(%w), index=1
  %ar = f32[8]{0} all-reduce(%v), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  %i = s32[] get-tuple-element(%w), index=0
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %ar)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %ag = f32[16]{0} all-gather(%a), channel_id=2, dimensions={0}
  %z = s32[] constant(0)
  %t = (s32[], f32[8]{0}) tuple(%z, %a)
  %w2 = (s32[], f32[8]{0}) while(%t), condition=%inner_cond, body=%outer_body, metadata={op_name="w2" stack_frame_id=2}, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = f32[8]{0} get-tuple-element(%w2), index=1
}
"""


def test_hlo_parser_counts_bytes_and_finds_loops():
    module = hlo_collectives.HloModule(_HLO)
    # all-gather operand f32[8] once; all-reduce f32[8] inside a loop run 3 times
    assert module.bytes_by_kind() == {"all-gather": 32, "all-reduce": 3 * 32}
    assert module.bytes_by_kind(include_loops=False) == {"all-gather": 32}
    loops = {lp.name: lp for lp in module.while_loops()}
    assert loops["w"].function == "scan_tokens" and not loops["w"].has_collectives
    assert loops["w"].trip_count == 4
    assert loops["w2"].function == "sleep_passes" and loops["w2"].collectives == {"all-reduce": 1}
    assert [lp.name for lp in hlo_collectives.loops_in(list(loops.values()), ("sleepjax/ops/",))] == ["w"]
    assert hlo_collectives.shape_bytes("(bf16[2,3]{1,0}, s32[])") == 2 * 6 + 4
