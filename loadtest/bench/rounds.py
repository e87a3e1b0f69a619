"""Comparisons that hold on a shared machine: Relais and each peer run in turns (A B A B A B),
so that whatever else the machine does between minutes weighs on both alike. Each side is then
stated as the median of its rounds with their spread (min–max), and a difference is claimed
only where the spreads do not overlap."""

import statistics


def alternate(rounds, sides, log=lambda message: None):
    """Runs each side once per round, in turns. `sides` is a list of (name, run) where `run`
    takes the round's index and returns a dict of results, or a dict with "skipped" when the
    side cannot run (it is then not asked again). Returns {name: [result of each round]}."""
    results = {name: [] for name, _ in sides}
    skipped = set()
    for index in range(rounds):
        for name, run in sides:
            if name in skipped:
                continue
            log(f"round {index + 1} of {rounds}: {name}")
            result = run(index)
            results[name].append(result)
            if "skipped" in result:
                skipped.add(name)
    return results


def pick(result, path):
    """The number at a dotted `path` in a result, or None."""
    value = result
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def spread(results, path):
    """Median, min and max of `path` over the rounds that measured it; None when none did."""
    values = [value for value in (pick(result, path) for result in results) if value is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": len(values),
            "values": values}


def paired_ratio(ours, our_path, theirs, their_path):
    """Round by round, ours over theirs (each pair ran one after the other, on the machine as
    it was then), as a spread; None when no round measured both."""
    ratios = [a / b for a, b in ((pick(x, our_path), pick(y, their_path)) for x, y in zip(ours, theirs))
              if a is not None and b]
    if not ratios:
        return None
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios),
            "values": ratios}


def compare(ours, theirs, higher_is_better=True):
    """Ours against theirs (two spreads): the ratio of the medians, whether the spreads overlap,
    and what that allows one to say."""
    if not ours or not theirs or not theirs["median"]:
        return None
    ratio = ours["median"] / theirs["median"]
    overlap = max(ours["min"], theirs["min"]) <= min(ours["max"], theirs["max"])
    if min(ours["rounds"], theirs["rounds"]) < 2:
        verdict = "no claim (one round: no spread to compare)"
    elif overlap:
        verdict = "no difference shown (the spreads overlap)"
    else:
        ahead = (ours["median"] > theirs["median"]) == higher_is_better
        verdict = "Relais ahead in every round" if ahead else "the peer ahead in every round"
    return {"ratio": ratio, "overlap": overlap, "verdict": verdict}


def median_round(results, path):
    """The round whose `path` is the median one (the lower middle for an even count), for the
    figures that only make sense together (a CPU breakdown)."""
    measured = [result for result in results if pick(result, path) is not None]
    if not measured:
        return None
    ordered = sorted(measured, key=lambda result: pick(result, path))
    return ordered[(len(ordered) - 1) // 2]


def cell(summary, digits=0, scale=1.0):
    """`median (min–max)` for a report table; a single round shows its value alone."""
    if not summary:
        return "not measured"

    def number(value):
        return f"{value * scale:,.{digits}f}"
    if summary["rounds"] == 1:
        return number(summary["median"])
    return f"{number(summary['median'])} ({number(summary['min'])}–{number(summary['max'])})"


def ratio_cell(comparison):
    """`**1.13**, no difference shown (...)` for a report."""
    if not comparison:
        return "not measured"
    return f"**{comparison['ratio']:.2f}**, {comparison['verdict']}"
