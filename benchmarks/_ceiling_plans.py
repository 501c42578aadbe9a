"""The hand-built plans of benchmarks/placement_ceiling.py, per packaged model: what an engineer
would try against uniform LoRA at the same size.  A plan is [(roles, layers, choice)]: the first
rule that names a module's role and layer gives its adapter; the first plan of a budget is its
reference, and names say "uniform" and "the widest" where the report needs to know."""
from __future__ import annotations

# lr per budget: 2e-3 beats 5e-4 for every method on MiniLM; small adapters also get 5e-3.
LRS = {"0.1%": (2e-3,), "0.05%": (2e-3,), "0.02%": (2e-3, 5e-3)}
ALL, ATTN = range(6), ("q", "k", "v", "o")
LORA = lambda r: {"type": "lora", "rank": r}  # noqa: E731
CIRC = {"type": "circulant"}
MORE = lambda n, r: {"type": "more", "nblocks": n, "rank": r}  # noqa: E731
IA3, IA3_IN = {"type": "ia3"}, {"type": "ia3", "side": "in"}
# budget -> plan -> [(roles, layers, choice)]; the first plan of a budget is its reference.
MINILM = {
    "0.1%": {
        "uniform q,v r2 (PEFT's default placement)": [(("q", "v"), ALL, LORA(2))],
        "uniform attention r1 (the widest that fits)": [(ATTN, ALL, LORA(1))],
        "uniform value r4": [(("v",), ALL, LORA(4))],
        "q,v r3 on layers 3-5, r1 below": [(("q", "v"), range(3, 6), LORA(3)), (("q", "v"), range(3), LORA(1))],
        "attention r2 on layers 3-5": [(ATTN, range(3, 6), LORA(2))],
        "value r2 + FFN down r1": [(("v",), ALL, LORA(2)), (("ffn_down",), ALL, LORA(1))],
        "attention r1 + FFN down r1 on layers 4-5": [(ATTN, ALL, LORA(1)), (("ffn_down",), (4, 5), LORA(1))],
        "value + output r2": [(("v", "o"), ALL, LORA(2))],
        "FFN up + down r1 on layers 1-5": [(("ffn_up", "ffn_down"), range(1, 6), LORA(1))],
        "MoRe N4 r2 on q,v": [(("q", "v"), ALL, MORE(4, 2))],
        "MoRe N4 r1 on attention": [(ATTN, ALL, MORE(4, 1))],
        "circulant q,k,o + value r2": [(("q", "k", "o"), ALL, CIRC), (("v",), ALL, LORA(2))],
        "(IA)^3 on k, v and FFN down (input), every layer": [(("k", "v"), ALL, IA3), (("ffn_down",), ALL, IA3_IN)],
        "q, v r1 + (IA)^3 on k and FFN down (input)": [(("q", "v"), ALL, LORA(1)), (("k",), ALL, IA3),
                                                       (("ffn_down",), ALL, IA3_IN)],
    },
    # Where the MLP spans less than half the layers, the search prefers the widest placement.
    "0.05%": {
        "uniform q,v r1 (the widest that fits)": [(("q", "v"), ALL, LORA(1))],
        "FFN up + down r1 on layers 4-5": [(("ffn_up", "ffn_down"), (4, 5), LORA(1))],
    },
    "0.02%": {
        "uniform q,v r1 on layers 4-5 (the most that fits)": [(("q", "v"), (4, 5), LORA(1))],
        "uniform value r1 on layers 1-5 (the widest that fits)": [(("v",), range(1, 6), LORA(1))],
        "circulant value + query on layers 1-5": [(("v",), ALL, CIRC), (("q",), range(1, 6), CIRC)],
        "(IA)^3 on k, v on layers 1-5": [(("k", "v"), range(1, 6), IA3)],
        "(IA)^3 on value and FFN down (input) on layers 4-5": [(("v",), (4, 5), IA3), (("ffn_down",), (4, 5), IA3_IN)],
        # MoRe's block rank 1 costs LoRA r1's parameters at rank N (its paper's selling point).
        "MoRe N4 r1 on value, layers 1-5": [(("v",), range(1, 6), MORE(4, 1))],
        "MoRe N8 r1 on value, layers 1-5": [(("v",), range(1, 6), MORE(8, 1))],
        # The SURM kinds at the same 768 parameters per module (unrestricted rank).
        "Toeplitz on value, layers 1-5": [(("v",), range(1, 6), {"type": "toeplitz"})],
        "Kronecker r8 on value, layers 1-5": [(("v",), range(1, 6), {"type": "kronecker", "rank": 8})],
        "LDR r1 on value, layers 1-5": [(("v",), range(1, 6), {"type": "ldr", "rank": 1})],
        # HeteroLoRA's shortcuts at rank 1 (768 parameters each), alpha 4 as in the paper.
        "shortcut s_res2 r1 on layers 1-5": [(("s_res2",), range(1, 6), {"rank": 1, "alpha": 4.0})],
        "shortcut s_in r1 on layers 1-5": [(("s_in",), range(1, 6), {"rank": 1, "alpha": 4.0})],
    },
}

# MPNet-base, 12 layers, 768 wide (issue: is there a better plan at 12 layers?): LoRA r1 costs 1,536
# on an attention matrix and 3,840 on an FFN one; 0.1% is 108,895 parameters, 0.02% 21,779.  The
# uniform ones are nas.baselines' at those sizes; the graded q,v plans match q,v r2's 73,728.
TWELVE, TOP, BOTTOM = range(12), range(6, 12), range(6)
MLP = ("ffn_up", "ffn_down")
MPNET = {
    "0.1%": {
        "uniform q,v r2 (PEFT's default placement)": [(("q", "v"), TWELVE, LORA(2))],
        "uniform attention r1 (the widest that fits)": [(ATTN, TWELVE, LORA(1))],
        "uniform MLP r1": [(MLP, TWELVE, LORA(1))],
        "all linear layers r1 on layers 5-11": [(ATTN + MLP, range(5, 12), LORA(1))],
        "q,v r3 on layers 8-11, r2 on 4-7, r1 on 0-3 (rank at the top)":
            [(("q", "v"), range(8, 12), LORA(3)), (("q", "v"), range(4, 8), LORA(2)), (("q", "v"), range(4), LORA(1))],
        "q,v r1 on layers 8-11, r2 on 4-7, r3 on 0-3 (rank at the bottom)":
            [(("q", "v"), range(8, 12), LORA(1)), (("q", "v"), range(4, 8), LORA(2)), (("q", "v"), range(4), LORA(3))],
        "attention r2 on layers 6-11": [(ATTN, TOP, LORA(2))],
        "attention r2 on layers 0-5": [(ATTN, BOTTOM, LORA(2))],
        "MoRe N4 r1 on attention": [(ATTN, TWELVE, MORE(4, 1))],
    },
    # All linear layers do not fit at r1 on even two layers (27,648).
    "0.02%": {
        "uniform q,v r1 on layers 5-11 (the most that fits)": [(("q", "v"), range(5, 12), LORA(1))],
        "uniform value r1 (the widest that fits)": [(("v",), TWELVE, LORA(1))],
        "uniform MLP r1 on layers 10-11": [(MLP, (10, 11), LORA(1))],
        "value r2 on layers 6-11": [(("v",), TOP, LORA(2))],
        "value r2 on layers 0-5": [(("v",), BOTTOM, LORA(2))],
        "MoRe N4 r1 on value": [(("v",), TWELVE, MORE(4, 1))],
    },
}
PLANS = {"minilm": MINILM, "mpnet": MPNET}
NAMES = {"minilm": "MiniLM", "mpnet": "MPNet-base"}  # in the reports
