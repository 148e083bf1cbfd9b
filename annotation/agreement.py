"""Inter-labeler agreement and consensus for rankings: pure math, no Django, no third-party imports.

Conventions: a ranking is one labeler's ranks for the same n items, 1 = best; equal values are ties, and
any numbers work ("dense" ``[1, 2, 2, 3]``, "competition" ``[1, 2, 2, 4]`` or scores where lower is better),
because every row is first turned into average (fractional) ranks: ``[1, 2, 2, 3] -> [1, 2.5, 2.5, 4]``.

``kendall_w``
    Kendall's coefficient of concordance with the tie correction (Kendall & Babington Smith 1939;
    Kendall & Gibbons, "Rank Correlation Methods", 5th ed., 1990, ch. 6)::

        W = 12 S / (m^2 (n^3 - n) - m sum_j T_j)

    for m labelers and n items, where R_i is item i's sum of average ranks, S = sum_i (R_i - mean R)^2 and
    T_j = sum (t^3 - t) over labeler j's groups of t tied items. W is 1 when every labeler gives the same
    ranking and 0 when the rank sums are all equal. It equals Friedman's chi-square (with the same tie
    correction) divided by m (n - 1).

``krippendorff_alpha``
    Krippendorff's alpha from the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's
    Alpha-Reliability", https://repository.upenn.edu/asc_papers/43). A unit with m_u >= 2 values adds
    n_uc (n_uk - [c = k]) / (m_u - 1) to o_ck, where n_uc is how many labelers gave it value c; units with
    fewer than 2 values are dropped. With marginals n_c = sum_k o_ck and n = sum_c n_c::

        alpha = 1 - (n - 1) sum_ck o_ck delta^2_ck / sum_ck n_c n_k delta^2_ck

    nominal: delta^2 = [c != k]; interval: (c - k)^2; ordinal, over the sorted values that occur:
    (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2. 1 is perfect agreement, 0 is agreement at chance level.

``consensus_ranking``
    One ranking from many, with a per-item confidence. "borda" ranks items by their mean average rank;
    "ranked_pairs" is Tideman's method ("Independence of clones as a criterion for voting rules", Social
    Choice and Welfare 4, 1987) on pairwise majority margins, with Zavist & Tideman's tie-breaking ranking
    (1989) where margins are equal; see ``consensus_ranking`` for ties and confidence.

Degenerate input (too few labelers or items, ragged rows, nothing to compare, no variation at all) raises
``ValueError`` instead of returning NaN.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from itertools import groupby

LEVELS = ("nominal", "ordinal", "interval")
METHODS = ("borda", "ranked_pairs")


def _average_ranks(row: Sequence[float]) -> list[float]:
    """Average (fractional) ranks, ascending: [1, 2, 2, 3] -> [1.0, 2.5, 2.5, 4.0]."""
    ranks = [0.0] * len(row)
    if len(set(row)) == len(row):  # no ties, the common case (exports take consensus over millions of rows)
        for position, i in enumerate(sorted(range(len(row)), key=row.__getitem__), start=1):
            ranks[i] = float(position)
        return ranks
    before = 0
    for _, group in groupby(sorted(range(len(row)), key=row.__getitem__), key=row.__getitem__):
        members = list(group)
        for i in members:
            ranks[i] = before + (len(members) + 1) / 2
        before += len(members)
    return ranks


def _rank_rows(rankings: Sequence[Sequence[float]], *, min_labelers: int, min_items: int) -> list[list[float]]:
    """Validate a labelers x items table of ranks and return each row as average ranks."""
    rows = [list(row) for row in rankings]
    if len(rows) < min_labelers:
        raise ValueError(f"need at least {min_labelers} labeler(s), got {len(rows)}")
    n = len(rows[0])
    if any(len(row) != n for row in rows):
        raise ValueError(f"every labeler must rank the same items; got row lengths {[len(row) for row in rows]}")
    if n < min_items:
        raise ValueError(f"need at least {min_items} item(s), got {n}")
    if any(value != value for row in rows for value in row):
        raise ValueError("ranks must not be NaN")
    return [_average_ranks(row) for row in rows]


def _tie_term(average_ranks: list[float]) -> int:
    """T = sum of t^3 - t over the groups of t tied items."""
    return sum(t**3 - t for t in Counter(average_ranks).values())


def kendall_w(ranks: Sequence[Sequence[float]]) -> float:
    """Kendall's W (tie-corrected) for m labelers' rankings of the same n items, in [0, 1].

    Raises ValueError for fewer than 2 labelers or 2 items, rows of different lengths, NaN ranks, or when
    every labeler ties every item (the denominator is 0 and W is undefined).
    """
    rows = _rank_rows(ranks, min_labelers=2, min_items=2)
    m, n = len(rows), len(rows[0])
    denominator = m * m * (n**3 - n) - m * sum(_tie_term(row) for row in rows)
    if denominator == 0:
        raise ValueError("Kendall's W is undefined when every labeler ties every item")
    sums = [sum(column) for column in zip(*rows, strict=True)]
    mean = m * (n + 1) / 2  # the mean rank sum: every row of average ranks sums to n (n + 1) / 2
    s = sum((r - mean) ** 2 for r in sums)
    return 12 * s / denominator


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _coincidences(data: Sequence[Mapping[Hashable, object]]) -> Counter:
    """o_ck over the pairable units: a unit with m_u >= 2 values adds n_uc (n_uk - [c = k]) / (m_u - 1)."""
    o: Counter = Counter()
    for unit in data:
        counts = Counter(value for value in unit.values() if not _is_missing(value))
        m_u = sum(counts.values())
        if m_u < 2:
            continue
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                o[c, k] += n_c * (n_k - (c == k)) / (m_u - 1)
    return o


def _ordinal_distances(marginals: dict) -> dict[tuple, float]:
    """delta^2_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 over the sorted values that occur."""
    values = sorted(marginals)
    cumulative = [0.0]
    for value in values:
        cumulative.append(cumulative[-1] + marginals[value])
    distances = {}
    for i, c in enumerate(values):
        for j in range(i, len(values)):
            k = values[j]
            distance = (cumulative[j + 1] - cumulative[i] - (marginals[c] + marginals[k]) / 2) ** 2
            distances[c, k] = distances[k, c] = distance
    return distances


def _distances(level: str, marginals: dict) -> dict[tuple, float]:
    if level == "ordinal":
        return _ordinal_distances(marginals)
    if level == "interval":
        return {(c, k): float((c - k) ** 2) for c in marginals for k in marginals}
    return {(c, k): float(c != k) for c in marginals for k in marginals}


def krippendorff_alpha(data: Sequence[Mapping[Hashable, object]], level: str = "ordinal") -> float:
    """Krippendorff's alpha for units given as {labeler: value} dicts; alpha <= 1, 1 = perfect agreement.

    A labeler absent from a unit, or a None (or float NaN) value, is missing. ``level`` is "nominal" (values
    only need to be hashable), "ordinal" (values are ordered by their natural sort order) or "interval"
    (values are numbers). Raises ValueError for any other level, when no unit has 2 or more values, or when
    all pairable values are equal (no variation: the expected disagreement is 0 and alpha is undefined).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    o = _coincidences(data)
    if not o:
        raise ValueError("Krippendorff's alpha needs at least one unit with values from 2 or more labelers")
    marginals: Counter = Counter()
    for (c, _), weight in o.items():
        marginals[c] += weight
    if len(marginals) < 2:
        raise ValueError("Krippendorff's alpha is undefined when every pairable value is the same (no variation)")
    delta = _distances(level, marginals)
    n = sum(marginals.values())
    observed = sum(weight * delta[pair] for pair, weight in o.items())
    expected = sum(n_c * n_k * delta[c, k] for c, n_c in marginals.items() for k, n_k in marginals.items())
    return 1 - (n - 1) * observed / expected


def _dense_ranks(keys: Sequence) -> list[int]:
    """1 for the smallest key; equal keys share a rank, and ranks have no gaps."""
    rank_of = {key: rank for rank, key in enumerate(sorted(set(keys)), start=1)}
    return [rank_of[key] for key in keys]


def _margins(rows: list[list[float]]) -> list[list[int]]:
    """margins[a][b] = labelers ranking a above b minus labelers ranking b above a."""
    n = len(rows[0])
    return [[sum((row[a] < row[b]) - (row[b] < row[a]) for row in rows) for b in range(n)] for a in range(n)]


def _indistinguishable_groups(margins: list[list[int]]) -> list[list[int]]:
    """Items with a zero margin between them and the same margin against every other item.

    This relation is an equivalence, so comparing with each group's first item is enough.
    """
    n = len(margins)
    groups: list[list[int]] = []
    for item in range(n):
        for group in groups:
            first = group[0]
            if margins[item][first] == 0 and all(margins[item][x] == margins[first][x]
                                                 for x in range(n) if x not in (item, first)):
                group.append(item)
                break
        else:
            groups.append([item])
    return groups


def _reaches(edges: dict[int, set[int]], start: int, goal: int) -> bool:
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        for nxt in edges[node] - seen:
            seen.add(nxt)
            stack.append(nxt)
    return False


def _ranked_pairs(rows: list[list[float]]) -> list[int]:
    """Tideman's ranked pairs on groups of indistinguishable items; returns dense ranks per item."""
    margins = _margins(rows)
    groups = _indistinguishable_groups(margins)
    # Tie-breaking ranking: Borda rank sum (equal within a group), then the group's first item.
    borda = [sum(row[group[0]] for row in rows) for group in groups]
    tiebreak = _dense_ranks([(borda[g], groups[g][0]) for g in range(len(groups))])
    pairs = [(a, b) for a in range(len(groups)) for b in range(len(groups))
             if margins[groups[a][0]][groups[b][0]] > 0]
    # Larger margins first; on equal margins the better winner, then the worse loser (Zavist & Tideman 1989).
    pairs.sort(key=lambda p: (-margins[groups[p[0]][0]][groups[p[1]][0]], tiebreak[p[0]], -tiebreak[p[1]]))
    edges: dict[int, set[int]] = {g: set() for g in range(len(groups))}
    for winner, loser in pairs:
        if not _reaches(edges, loser, winner):
            edges[winner].add(loser)
    beaten_by = Counter(loser for losers in edges.values() for loser in losers)
    remaining = set(range(len(groups)))
    ranks = [0] * len(rows[0])
    for position in range(1, len(groups) + 1):
        top = min((g for g in remaining if beaten_by[g] == 0), key=tiebreak.__getitem__)
        remaining.remove(top)
        for loser in edges[top]:
            beaten_by[loser] -= 1
        for item in groups[top]:
            ranks[item] = position
    return ranks


def _confidence(rows: list[list[float]], consensus: list[int]) -> list[float]:
    """Per item: the share of (labeler, other item) comparisons whose outcome (better, tie, worse) matches
    the consensus. An item with no other item to compare with has confidence 1."""
    n = len(consensus)
    if n == 1:
        return [1.0]

    def sign(x: float) -> int:
        return (x > 0) - (x < 0)

    return [sum(sign(row[i] - row[x]) == sign(consensus[i] - consensus[x]) for row in rows for x in range(n) if x != i)
            / (len(rows) * (n - 1)) for i in range(n)]


def consensus_ranking(rankings: Sequence[Sequence[float]], method: str = "borda") -> tuple[list[int], list[float]]:
    """The consensus of labelers' rankings of the same items: (dense ranks, 1 = best; confidence per item).

    ``method="borda"``: items ordered by their mean average rank (lower is better); equal means tie.
    ``method="ranked_pairs"``: Tideman's ranked pairs on pairwise majority margins. Items that are
    indistinguishable pairwise (margin 0 between them and equal margins against every other item, e.g. items
    every labeler ties) are merged and tie in the result; every other pair gets distinct ranks. Equal
    margins, and items left unordered by the locked pairs (zero margins), are broken by the Borda order,
    then by item position.

    Confidence of item i, in [0, 1]: over every labeler and every other item x, the share of comparisons
    (i vs x) where the labeler's outcome (better, tied or worse) is the consensus outcome; so where the
    consensus ties i and x, only labelers who also tied them agree. Raises ValueError for no labelers, no
    items, rows of different lengths, NaN ranks or an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    rows = _rank_rows(rankings, min_labelers=1, min_items=1)
    if method == "borda":
        consensus = _borda(rows)
    else:
        consensus = _ranked_pairs(rows)
    return consensus, _confidence(rows, consensus)


def borda_ranking(rankings: Sequence[Sequence[float]]) -> list[int]:
    """``consensus_ranking(rankings)[0]`` for the Borda method, without the confidence, which takes longer to
    compute than the ranks (exports that do not show it use this). Raises ValueError for the same input."""
    return _borda(_rank_rows(rankings, min_labelers=1, min_items=1))


def _borda(rows: list[list[float]]) -> list[int]:
    """Dense ranks of the items' sums of average ranks (lower is better)."""
    return _dense_ranks([sum(column) for column in zip(*rows, strict=True)])


# --- Helpers for the platform's quality numbers (annotation.quality) -----------------------------------


def average_ranks(row: Sequence[float]) -> list[float]:
    """One labeler's ranks as average (fractional) ranks, 1 = best: ``[1, 2, 2, 3] -> [1.0, 2.5, 2.5, 4.0]``.
    Ties then mean the same thing whatever else the labeler ranked, which makes ranks from different
    rankings comparable values (the units of ``krippendorff_alpha`` over candidates)."""
    return _average_ranks(list(row))


def pairwise_accuracy(ranks: Sequence[float], reference: Sequence[float]) -> tuple[float, int]:
    """How far one ranking agrees with a reference ranking of the same items, pair by pair.

    Over the pairs of items that ``reference`` orders strictly (its ties are not counted), the credit is 1
    when ``ranks`` orders the pair the same way, 1/2 when it ties them and 0 when it reverses them: Harrell's
    concordance index (Harrell et al. 1982, "Evaluating the yield of medical tests", JAMA 247(18)), the
    pairwise accuracy a reward model is scored by. Returns (credit, pairs); credit / pairs is in [0, 1],
    1/2 on average for a random ranking without ties. Raises ValueError for rows of different lengths.
    """
    if len(ranks) != len(reference):
        raise ValueError(f"the ranking and the reference must rank the same items; got {len(ranks)} and "
                         f"{len(reference)}")
    credit, pairs = 0.0, 0
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            if reference[i] == reference[j]:
                continue
            pairs += 1
            if ranks[i] == ranks[j]:
                credit += 0.5
            elif (ranks[i] < ranks[j]) == (reference[i] < reference[j]):
                credit += 1.0
    return credit, pairs


def first_shown_credit(ranks_in_shown_order: Sequence[float]) -> float:
    """The first-shown item's share of "ranked best": 1/t when it is one of the t items tied at the best
    rank, else 0. The shares of all positions sum to 1, so with no position effect each position's expected
    share is exactly 1/k (ties included)."""
    if not ranks_in_shown_order:
        raise ValueError("need at least one item")
    best = min(ranks_in_shown_order)
    if ranks_in_shown_order[0] != best:
        return 0.0
    return 1.0 / sum(1 for rank in ranks_in_shown_order if rank == best)


def chance_test(observed: float, chances: Sequence[float]) -> tuple[float, float, float | None, float | None]:
    """Observed successes against chance, one trial per entry of ``chances`` (its success probability
    under the null): returns (expected, standard error of the count, z, two-sided p).

    expected = sum p_i and variance = sum p_i (1 - p_i) (a binomial when every p_i is the same; the
    Poisson binomial otherwise); z = (observed - expected) / sqrt(variance) and p = erfc(|z| / sqrt 2), the
    normal approximation. Fractional successes (ties) have variance at most p (1 - p), so the test is then
    conservative. z and p are None when the variance is 0 (no trials, or chance 0 or 1).
    """
    expected = float(sum(chances))
    variance = float(sum(p * (1 - p) for p in chances))
    if variance <= 0:
        return expected, 0.0, None, None
    se = math.sqrt(variance)
    z = (observed - expected) / se
    return expected, se, z, math.erfc(abs(z) / math.sqrt(2))
