"""x64 options: global flag vs jax.enable_x64 scope, small engine run, alternated in one process."""
import json, statistics, time
import jax
import swarm_jax  # noqa: F401  (turns x64 on globally: today's default)
from swarm_jax.physics import PhysicsParams, init_flat, make_rate_tables, run, step

params = PhysicsParams(temperature=300.0, deposition_rate=1.0)
N = 2000

def setup():
    return init_flat((20, 20, 10), params), make_rate_tables(params)

def modes():
    def global_mode(f):
        jax.config.update("jax_enable_x64", True)
        return f()
    def scoped_mode(f):
        jax.config.update("jax_enable_x64", False)
        with jax.enable_x64(True):
            return f()
    return {"global": global_mode, "scoped": scoped_mode}

M = modes()
data = {name: M[name](setup) for name in M}  # each mode's state built under its own setting
res = {}
def do_run(name):
    s, t = data[name]
    return jax.block_until_ready(run(s, t, jax.random.key(0), N))
def do_step(name):
    s, t = data[name]
    return jax.block_until_ready(step(s, t, jax.random.key(1)))
for name in M:
    t0 = time.perf_counter(); out = M[name](lambda: do_run(name)); res[f"{name}_first_run_s"] = round(time.perf_counter() - t0, 3)
    res[f"{name}_clock_dtype"] = str(out.time.dtype)
    print(name, res, flush=True)
runs = {k: [] for k in M}; steps = {k: [] for k in M}
for i in range(4):
    order = list(M) if i % 2 == 0 else list(M)[::-1]
    for name in order:
        t0 = time.perf_counter(); M[name](lambda: do_run(name)); runs[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(20):
            M[name](lambda: do_step(name))
        steps[name].append((time.perf_counter() - t0) / 20)
    print(i, runs, steps, flush=True)
a = M["global"](lambda: do_run("global")); b = M["scoped"](lambda: do_run("scoped"))
res.update({f"{k}_run_{N}_events_median_s": round(statistics.median(v), 4) for k, v in runs.items()})
res.update({f"{k}_one_step_call_median_ms": round(1e3 * statistics.median(v), 3) for k, v in steps.items()})
res["same_film_bitwise"] = bool((a.heights == b.heights).all() and (a.species == b.species).all() and float(a.time) == float(b.time))
res["machine"] = "2-core AMD EPYC CPU, loaded (load average 11-15: other helpers' test runs)"
res["jax"] = jax.__version__
print("RESULT", json.dumps(res), flush=True)
