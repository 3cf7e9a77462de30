"""Formatting of benchmarks/speed.py results: a log line per row, markdown tables."""


def format_row(r):
    parts = [f"{r['config']:<16} {r['variant']:<16} {r['chars_per_s']:>10,.0f} chars/s"]
    if "vs_torch" in r:
        parts.append(f"x{r['vs_torch']:.2f} vs torch")
    if "gflops" in r:
        parts.append(f"{r['gflops']:.0f} GFLOP/s")
    for key, fmt in (("compile_s", "compile {:.1f} s"), ("first_step_s", "first step {:.2f} s"),
                     ("first_char_s", "first char {:.3f} s"),
                     ("first_char_cold_s", "cold {:.2f} s"), ("xla_temp_mb", "XLA temp {:.0f} MB")):
        if r.get(key) is not None:
            parts.append(fmt.format(r[key]))
    parts.append(f"maxRSS {r['max_rss_mb']:.0f} MB")
    return "  ".join(parts)


def markdown(results: list[dict], meta: dict) -> str:
    """The results as three markdown tables (training, evaluation, sampling)."""
    def num(v, fmt):
        return "" if v is None else fmt.format(v)

    out = []
    train = [r for r in results if r["config"].startswith("train")]
    if train:
        out += ["| config | variant | chars/s | vs torch | GFLOP/s | % of matmul peak | "
                "compile s | XLA temp MB | max RSS MB |", "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
        out += [f"| {r['config'][6:]} | {r['variant']} | {r['chars_per_s']:,.0f} | "
                f"{num(r.get('vs_torch'), '{:.2f}')} | {r['gflops']:.0f} | "
                f"{100 * r['peak_fraction']:.0f}% | {num(r.get('compile_s'), '{:.1f}')} | "
                f"{num(r.get('xla_temp_mb'), '{:.0f}')} | {r['max_rss_mb']:.0f} |" for r in train]
    evals = [r for r in results if r["config"].startswith("eval")]
    if evals:
        out += ["", "| eval (forward only) | variant | chars/s | vs torch | GFLOP/s | "
                "% of matmul peak | compile s |", "|---|---|--:|--:|--:|--:|--:|"]
        out += [f"| {r['config'][5:]} | {r['variant']} | {r['chars_per_s']:,.0f} | "
                f"{num(r.get('vs_torch'), '{:.2f}')} | {r['gflops']:.0f} | "
                f"{100 * r['peak_fraction']:.0f}% | {num(r.get('compile_s'), '{:.1f}')} |"
                for r in evals]
    samples = [r for r in results if r["config"].startswith("sample")]
    if samples:
        out += ["", "| sampling | variant | chars/s | vs torch | first char s (warm) | "
                "first call s (compiling) |", "|---|---|--:|--:|--:|--:|"]
        out += [f"| {r['config'][7:]} | {r['variant']} | {r['chars_per_s']:,.0f} | "
                f"{num(r.get('vs_torch'), '{:.2f}')} | {r['first_char_s']:.3f} | "
                f"{num(r.get('first_char_cold_s'), '{:.2f}')} |" for r in samples]
    peaks = meta["matmul_peak_gflops"]
    out += ["", f"device {meta['device']}; "
            f"jax {meta['jax']}, torch {meta['torch']} ({meta['torch_threads']} threads), "
            f"{meta['cpus']} CPUs; malloc: {meta['malloc']}; "
            f"{meta['rounds']} rounds x {meta['steps_per_round']} steps, "
            f"medians. jnp.dot 2048x2048 float32: {peaks[0]} / {peaks[1]} GFLOP/s at the "
            f"start / end (the % column uses the larger). Other processes kept "
            f"{max(0.0, meta['other_load_cpus']):.2f} of {meta['cpus']} CPUs busy during the run."]
    return "\n".join(out)
