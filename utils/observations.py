"""The report's observations: sentences generated from measured numbers, so that what they say holds for
the run they describe (a word such as "increases" appears only when the numbers increase).

Each function takes the JSON a program wrote (already checked by report.py) and returns sentences;
none reads a file. Numbers appear in the sentence as the JSON has them, rounded for reading.
"""


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _series(values: list[float], digits: int = 1) -> str:
    return ", ".join(_f(v, digits) for v in values)


def trend(values: list[float], tolerance: float = 0.0) -> str:
    """How a series moves: "increases" or "decreases" (every step, beyond `tolerance`), "stays flat" (no step
    beyond it), else "does not change monotonically"."""
    steps = [b - a for a, b in zip(values, values[1:])]
    if not steps or all(abs(s) <= tolerance for s in steps):
        return "stays flat"
    if all(s > tolerance for s in steps):
        return "increases"
    if all(s < -tolerance for s in steps):
        return "decreases"
    return "does not change monotonically"


# --------------------------------------------------------------------------------------------- P2
def eta_sentences(sweep: dict) -> list[str]:
    """What the eta grid shows, from p2_ddim.py's eta_sweep.json: how far each eta row departs from the
    reference row (eta 0: deterministic DDIM) of the same noise, and how different neighbouring rows are."""
    etas, ref = sweep["etas"], sweep["reference_eta"]
    mean_from = sweep["mean_from_eta0"]
    per_noise = list(zip(*sweep["mad_from_eta0"]))  # per noise: its distance at each eta
    names = sweep["noises"]
    moves = trend(mean_from)
    out = [f"Mean absolute pixel difference from the eta-{_f(ref, 2)} image of the same noise (0-255 scale), averaged "
           f"over the {len(names)} noises: {_series(mean_from)} for eta {_series(etas, 2)}; it {moves} with eta."]
    rising = [n for n, d in zip(names, per_noise) if trend(list(d)) == "increases"]
    out.append(f"For {len(rising)} of the {len(names)} noises it increases at every step of eta"
               + (f" ({', '.join(rising)})." if 0 < len(rising) < len(names) else "."))
    between = sweep["mean_between_rows"]
    if between:
        k = max(range(len(between)), key=between.__getitem__)
        out.append(f"Neighbouring rows differ by {_series(between)} on average (eta {_f(etas[0], 2)} to "
                   f"{_f(etas[1], 2)} first); the largest change is between eta {_f(etas[k], 2)} and "
                   f"{_f(etas[k + 1], 2)}.")
    if moves == "increases":
        out.append("The larger eta, the more fresh noise each DDIM step adds, and the further the face moves "
                   "from the deterministic one; at eta 0 the noise alone decides the image.")
    else:
        out.append("The distance does not grow steadily with eta here, so this run does not show eta's "
                   "added noise moving the faces further at each step.")
    return out


def interpolation_sentences(data: dict) -> list[str]:
    """Slerp against linear interpolation, from p2_ddim.py's interpolation.json: the norm of the interpolated
    noise and the contrast and saturation of the faces against alpha."""
    alphas = data["alphas"]
    mid = min(range(len(alphas)), key=lambda i: abs(alphas[i] - 0.5))
    ends = data["noise_rms_ends"]
    rms = data["noise_rms"]
    lin_low = min(rms["linear"])
    out = [f"Noise RMS at alpha {_f(alphas[mid], 2)}: linear {_f(rms['linear'][mid], 3)}, slerp "
           f"{_f(rms['slerp'][mid], 3)}, against {_f(ends, 3)} at the ends (for independent Gaussian noises, linear "
           f"interpolation's midpoint has 1/sqrt(2) of the norm, slerp keeps it)."]
    if lin_low < 0.9 * ends:
        out.append(f"So the linear path hands the sampler noise with {_f(lin_low / ends, 2)} of the norm it was trained "
                   "on at its lowest point, where slerp stays on the shell the Gaussian noise lives on.")
    else:
        out.append(f"The linear path's noise keeps at least {_f(lin_low / ends, 2)} of the ends' norm here, so the "
                   "norm does not separate the two interpolations in this run.")
    for key, what, digits in (("contrast", "contrast (standard deviation of the grey levels)", 1),
                              ("saturation", "saturation (mean HSV saturation)", 3)):
        lin, sl = data[key]["linear"], data[key]["slerp"]
        i = min(range(len(lin)), key=lin.__getitem__)
        gap = sl[i] - lin[i]
        if gap > 0:
            verdict = (f"the linear row is flatter in the middle: its {what.split(' (')[0]} falls to "
                       f"{_f(lin[i], digits)} at alpha {_f(alphas[i], 2)}, where slerp's is {_f(sl[i], digits)}")
        else:
            verdict = (f"the linear row is not flatter than slerp's: at its lowest (alpha {_f(alphas[i], 2)}) its "
                       f"{what.split(' (')[0]} is {_f(lin[i], digits)} against slerp's {_f(sl[i], digits)}")
        out.append(f"Image {what}: linear {_series(lin, digits)}, slerp {_series(sl, digits)} over alpha; {verdict}.")
    return out


# --------------------------------------------------------------------------------------------- P3
def clip_sentences(results: dict) -> list[str]:
    """CLIP zero-shot, from p3_clip_zeroshot.py's results.json: prompt ensembling and the confused classes."""
    out = []
    prompting = results.get("prompting")
    if prompting:
        one, many = prompting["single"]["accuracy"], prompting["ensemble"]["accuracy"]
        change = "raises" if many > one else "lowers" if many < one else "leaves unchanged"
        out.append(f"Prompt ensembling ({prompting['ensemble']['templates']} templates, their text embeddings "
                   f"averaged) {change} the accuracy: {_f(one, 4)} with the single prompt "
                   f"\"{prompting['single']['template']}\", {_f(many, 4)} with the ensemble.")
    pairs = results.get("confused_pairs") or []
    if pairs:
        listed = "; ".join(f"{p['true_label']} taken for {p['pred_label']} ({p['count']}x)" for p in pairs)
        out.append(f"The most frequent confusions: {listed}.")
    return out


METHOD_NAMES = {"textual_inversion": "textual inversion", "custom_diffusion_joint": "Custom Diffusion (joint)",
                "custom_diffusion_merged": "Custom Diffusion (merged)"}


def two_concept_sentences(data: dict) -> list[str]:
    """Two concepts in one prompt, from p3_custom_diffusion.py figure's JSON: how much of each concept each
    method's images hold (CLIP image similarity to the concept's photos) and how well they follow the prompt."""
    a, b = data["concepts"]
    methods = data["methods"]
    out = []
    for key, m in methods.items():
        sa, sb = m["image_sim"][a], m["image_sim"][b]
        lead = (f"{a} dominates ({_f(sa)} against {_f(sb)} for {b})" if sa > sb else
                f"{b} dominates ({_f(sb)} against {_f(sa)} for {a})" if sb > sa else f"both concepts equal ({_f(sa)})")
        out.append(f"{METHOD_NAMES.get(key, key)}: image similarity {_f(sa)} to {a}'s photos and {_f(sb)} to {b}'s "
                   f"({m['n_images']} images), text similarity {_f(m['text_sim'])}; {lead}.")
    if len(methods) > 1:
        best = max(methods, key=lambda k: min(methods[k]["image_sim"].values()))
        weakest = min(methods[best]["image_sim"].values())
        out.append(f"Holding both concepts (the lower of the two image similarities): {METHOD_NAMES.get(best, best)} "
                   f"does best ({_f(weakest)}); "
                   + ", ".join(f"{METHOD_NAMES.get(k, k)} {_f(min(m['image_sim'].values()))}"
                               for k, m in methods.items() if k != best) + ".")
        text_best = max(methods, key=lambda k: methods[k]["text_sim"])
        out.append(f"Following the prompt (text similarity): {METHOD_NAMES.get(text_best, text_best)} is highest "
                   f"({_f(methods[text_best]['text_sim'])}).")
    return out
