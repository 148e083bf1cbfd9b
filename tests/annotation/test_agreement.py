"""annotation.agreement: hand-computed values, reference implementations (scipy, the krippendorff package)
on random data with ties and missing values, and the errors for degenerate input."""
from __future__ import annotations

import krippendorff
import numpy as np
import pytest
from scipy.stats import friedmanchisquare

from annotation.agreement import average_ranks, borda_ranking, consensus_ranking, kendall_w, krippendorff_alpha

# --- Kendall's W ---------------------------------------------------------------------------------------


def test_kendall_w_matches_hand_computation_without_ties():
    # Rank sums R = [1+2+1, 2+1+3, 3+3+2, 4+4+4] = [4, 6, 8, 12], mean 7.5;
    # S = 3.5^2 + 1.5^2 + 0.5^2 + 4.5^2 = 35; W = 12 * 35 / (3^2 (4^3 - 4)) = 420 / 540 = 7/9.
    assert kendall_w([[1, 2, 3, 4], [2, 1, 3, 4], [1, 3, 2, 4]]) == pytest.approx(7 / 9, abs=1e-12)


def test_kendall_w_matches_hand_computation_with_ties():
    # Average ranks: [1, 2.5, 2.5, 4], [1, 2, 3, 4], [2, 1, 3.5, 3.5]; R = [4, 5.5, 9, 11.5], mean 7.5;
    # S = 3.5^2 + 2^2 + 1.5^2 + 4^2 = 34.5; T = (2^3 - 2) + 0 + (2^3 - 2) = 12;
    # W = 12 * 34.5 / (9 * 60 - 3 * 12) = 414 / 504 = 23/28 (without the correction: 414 / 540).
    assert kendall_w([[1, 2, 2, 3], [1, 2, 3, 4], [2, 1, 3, 3]]) == pytest.approx(23 / 28, abs=1e-12)


def test_kendall_w_is_the_same_for_dense_competition_and_average_ranks():
    dense = [[1, 2, 2, 3], [1, 2, 3, 4], [2, 1, 3, 3]]
    competition = [[1, 2, 2, 4], [1, 2, 3, 4], [2, 1, 3, 3]]
    average = [[1, 2.5, 2.5, 4], [1, 2, 3, 4], [2, 1, 3.5, 3.5]]
    assert kendall_w(dense) == kendall_w(competition) == kendall_w(average)


def test_kendall_w_is_one_when_every_labeler_agrees():
    assert kendall_w([[2, 1, 3, 4]] * 5) == pytest.approx(1.0, abs=1e-12)


def test_kendall_w_is_one_when_every_labeler_gives_the_same_ties():
    # Average ranks [1.5, 1.5, 3] x 3: R = [4.5, 4.5, 9], S = 13.5; 12 * 13.5 / (9 * 24 - 3 * 6) = 162 / 162.
    assert kendall_w([[1, 1, 2]] * 3) == pytest.approx(1.0, abs=1e-12)


def test_kendall_w_is_zero_when_two_labelers_reverse_each_other():
    assert kendall_w([[1, 2, 3], [3, 2, 1]]) == 0.0


def _random_ranks(rng: np.random.Generator) -> np.ndarray:
    """Dense ranks with many ties; never every labeler tying every item."""
    while True:
        m, n = int(rng.integers(2, 7)), int(rng.integers(3, 9))
        ranks = rng.integers(1, n // 2 + 2, size=(m, n))
        if any(len(set(row)) > 1 for row in ranks):
            return ranks


@pytest.mark.parametrize("seed", range(20))
def test_kendall_w_equals_scipy_friedman_chi_square_over_m_times_n_minus_1(seed):
    # Friedman's statistic with scipy's tie correction c = 1 - sum T / (m (n^3 - n)) is
    # chi2 = 12 S / (m n (n + 1) c) = 12 S (n - 1) / (m (n^3 - n) - sum T), so W = chi2 / (m (n - 1)).
    ranks = _random_ranks(np.random.default_rng(seed))
    assert any(len(set(row)) < len(row) for row in ranks)  # the comparison includes ties
    m, n = ranks.shape
    chi2 = friedmanchisquare(*ranks.T.astype(float)).statistic
    assert kendall_w(ranks.tolist()) == pytest.approx(chi2 / (m * (n - 1)), abs=1e-9)


def test_kendall_w_rejects_fewer_than_two_labelers():
    with pytest.raises(ValueError, match="at least 2 labeler"):
        kendall_w([[1, 2, 3]])


def test_kendall_w_rejects_fewer_than_two_items():
    with pytest.raises(ValueError, match="at least 2 item"):
        kendall_w([[1], [1]])


def test_kendall_w_rejects_rows_of_different_lengths():
    with pytest.raises(ValueError, match="same items"):
        kendall_w([[1, 2, 3], [1, 2]])


def test_kendall_w_is_undefined_when_everyone_ties_everything():
    with pytest.raises(ValueError, match="ties every item"):
        kendall_w([[1, 1, 1], [2, 2, 2]])


def test_kendall_w_rejects_nan_ranks():
    with pytest.raises(ValueError, match="NaN"):
        kendall_w([[1, float("nan"), 2], [1, 2, 3]])


# --- Krippendorff's alpha ------------------------------------------------------------------------------

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", p. 8: 4 coders x 12 units, None = missing.
PAPER = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _units(coders_by_units: list[list]) -> list[dict]:
    """Coders x units table -> one {coder: value} dict per unit; None cells are left out of the dict."""
    return [{f"coder{c}": row[u] for c, row in enumerate(coders_by_units) if row[u] is not None}
            for u in range(len(coders_by_units[0]))]


@pytest.mark.parametrize(("level", "published"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_reproduces_the_published_example(level, published):
    assert krippendorff_alpha(_units(PAPER), level) == pytest.approx(published, abs=5e-4)


# Three coders, values 1..3; unit 4 has a single value and unit 5 only a None, so both are dropped.
SMALL = [{"A": 1, "B": 1, "C": 2}, {"A": 2, "B": 3}, {"A": 3, "B": 3, "C": 3}, {"A": 2}, {"A": None, "B": 1}]
# Coincidences: unit 1 (m_u = 3) adds o11 = 2*1/2 = 1, o12 = o21 = 2*1/2 = 1; unit 2 (m_u = 2) adds
# o23 = o32 = 1; unit 3 (m_u = 3) adds o33 = 3*2/2 = 3. Marginals n1 = 2, n2 = 2, n3 = 4, n = 8.
# nominal:  observed = o12 + o21 + o23 + o32 = 4; expected = 2 (2*2 + 2*4 + 2*4) = 40; 1 - 7*4/40 = 0.3.
# interval: observed = 4 * 1 = 4; expected = 2 (2*2*1 + 2*4*4 + 2*4*1) = 88; 1 - 7*4/88 = 15/22.
# ordinal:  d12 = (2+2 - 2)^2 = 4, d23 = (2+4 - 3)^2 = 9, d13 = (2+2+4 - 3)^2 = 25;
#           observed = 2*4 + 2*9 = 26; expected = 2 (2*2*4 + 2*4*25 + 2*4*9) = 576; 1 - 7*26/576 = 197/288.
@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.3), ("interval", 15 / 22), ("ordinal", 197 / 288)])
def test_krippendorff_alpha_matches_hand_computation(level, expected):
    assert krippendorff_alpha(SMALL, level) == pytest.approx(expected, abs=1e-12)


def test_krippendorff_alpha_defaults_to_ordinal():
    assert krippendorff_alpha(SMALL) == krippendorff_alpha(SMALL, "ordinal")


def test_krippendorff_alpha_treats_none_and_absent_labelers_alike():
    absent = [{"A": 1, "B": 2}, {"A": 2, "B": 2, "C": 3}, {"B": 1, "C": 1}]
    with_none = [{"A": 1, "B": 2, "C": None}, {"A": 2, "B": 2, "C": 3}, {"A": None, "B": 1, "C": 1}]
    assert krippendorff_alpha(absent, "interval") == krippendorff_alpha(with_none, "interval")


def test_krippendorff_alpha_is_one_when_every_labeler_agrees():
    data = [{"A": v, "B": v, "C": v} for v in (1, 2, 3, 2)]
    for level in ("nominal", "ordinal", "interval"):
        assert krippendorff_alpha(data, level) == pytest.approx(1.0, abs=1e-12)


def test_krippendorff_alpha_accepts_string_values_for_nominal_data():
    assert krippendorff_alpha([{"A": "x", "B": "x"}, {"A": "y", "B": "y"}], "nominal") == pytest.approx(1.0)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
@pytest.mark.parametrize("seed", range(10))
def test_krippendorff_alpha_matches_the_krippendorff_package(seed, level):
    rng = np.random.default_rng(seed)
    coders, units = int(rng.integers(2, 7)), int(rng.integers(5, 30))
    domain = [0.5, 1.0, 2.0, 3.5, 4.0][: int(rng.integers(2, 6))]
    # Coders mostly agree on a unit's value, so the alphas spread well beyond chance level.
    truth = rng.choice(domain, size=units)
    table = np.where(rng.random((coders, units)) < 0.6, truth, rng.choice(domain, size=(coders, units)))
    table[rng.random((coders, units)) < 0.3] = np.nan
    # Missing values both ways: an explicit None for even coders, left out of the dict for odd ones.
    data = [{c: (None if np.isnan(table[c, u]) else float(table[c, u])) for c in range(coders)
             if c % 2 == 0 or not np.isnan(table[c, u])} for u in range(units)]
    reference = krippendorff.alpha(reliability_data=table, level_of_measurement=level)
    assert krippendorff_alpha(data, level) == pytest.approx(reference, abs=1e-9)


def test_krippendorff_alpha_rejects_an_unknown_level():
    with pytest.raises(ValueError, match="level must be one of"):
        krippendorff_alpha(SMALL, "ratio")


def test_krippendorff_alpha_needs_a_unit_with_two_values():
    with pytest.raises(ValueError, match="at least one unit"):
        krippendorff_alpha([{"A": 1}, {"B": 2, "C": None}, {}])


def test_krippendorff_alpha_is_undefined_without_variation():
    # The 2 in the last unit is not pairable, so every pairable value is 1.
    with pytest.raises(ValueError, match="no variation"):
        krippendorff_alpha([{"A": 1, "B": 1}, {"A": 1, "C": 1}, {"A": 2}], "nominal")


# --- Consensus ranking ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["borda", "ranked_pairs"])
def test_consensus_matches_hand_computation_when_methods_agree(method):
    # Borda sums: item 0 = 1+1+2 = 4, item 1 = 2+3+1 = 6, item 2 = 3+2+3 = 8 -> [1, 2, 3].
    # Margins: 0 vs 1 = 2-1 = +1, 0 vs 2 = 3-0 = +3, 1 vs 2 = 2-1 = +1 -> locked 0>2, 0>1, 1>2 -> [1, 2, 3].
    # Confidence: item 0 agrees 2/3 vs item 1 and 3/3 vs item 2 -> 5/6; item 1: 2/3 + 2/3 -> 4/6;
    # item 2: 3/3 + 2/3 -> 5/6.
    ranks, confidence = consensus_ranking([[1, 2, 3], [1, 3, 2], [2, 1, 3]], method)
    assert ranks == [1, 2, 3]
    assert confidence == pytest.approx([5 / 6, 4 / 6, 5 / 6])


# 3 labelers A > B > C and 2 labelers B > C > A (items A, B, C = 0, 1, 2).
MAJORITY_VS_BORDA = [[1, 2, 3]] * 3 + [[3, 1, 2]] * 2


def test_borda_consensus_follows_mean_ranks():
    # Borda sums: A = 3*1 + 2*3 = 9, B = 3*2 + 2*1 = 8, C = 3*3 + 2*2 = 13 -> B, A, C.
    # Confidence: A agrees 2/5 vs B and 3/5 vs C -> 0.5; B: 2/5 + 5/5 -> 0.7; C: 3/5 + 5/5 -> 0.8.
    ranks, confidence = consensus_ranking(MAJORITY_VS_BORDA)
    assert ranks == [2, 1, 3]
    assert confidence == pytest.approx([0.5, 0.7, 0.8])


def test_ranked_pairs_consensus_follows_pairwise_majorities():
    # Margins: A vs B = 3-2 = +1, A vs C = 3-2 = +1, B vs C = 5-0 = +5 -> A, B, C (A is the Condorcet winner).
    # Confidence: A: 3/5 + 3/5 -> 0.6; B: 3/5 + 5/5 -> 0.8; C: 3/5 + 5/5 -> 0.8.
    ranks, confidence = consensus_ranking(MAJORITY_VS_BORDA, "ranked_pairs")
    assert ranks == [1, 2, 3]
    assert confidence == pytest.approx([0.6, 0.8, 0.8])


# A Condorcet cycle: 4 x A > B > C, 3 x B > C > A, 2 x C > A > B.
CYCLE = [[1, 2, 3]] * 4 + [[3, 1, 2]] * 3 + [[2, 3, 1]] * 2


def test_ranked_pairs_skips_the_weakest_pair_of_a_cycle():
    # Margins: A > B by 6-3 = 3, B > C by 7-2 = 5, C > A by 5-4 = 1. Lock B>C, then A>B; C>A would close
    # a cycle and is skipped -> A, B, C. Confidence: A: 6/9 vs B + 4/9 vs C -> 10/18; B: 6/9 + 7/9 -> 13/18;
    # C: 4/9 + 7/9 -> 11/18.
    ranks, confidence = consensus_ranking(CYCLE, "ranked_pairs")
    assert ranks == [1, 2, 3]
    assert confidence == pytest.approx([10 / 18, 13 / 18, 11 / 18])


def test_borda_ties_items_with_equal_mean_rank_and_confidence_counts_only_labelers_who_tied():
    # Borda sums: A = 4 + 9 + 4 = 17, B = 8 + 3 + 6 = 17, C = 12 + 6 + 2 = 20 -> A, B tie.
    # Nobody tied A and B, so they agree 0/9 with the consensus tie. A: 0/9 + 4/9 -> 2/9; B: 0/9 + 7/9 -> 7/18;
    # C: 4/9 + 7/9 -> 11/18.
    ranks, confidence = consensus_ranking(CYCLE)
    assert ranks == [1, 1, 2]
    assert confidence == pytest.approx([2 / 9, 7 / 18, 11 / 18])


def test_ranked_pairs_ties_items_that_are_indistinguishable():
    # A vs B = 0, and both beat C 2-0: A and B tie. Confidence: A, B: 0/2 vs each other + 2/2 vs C -> 0.5.
    ranks, confidence = consensus_ranking([[1, 2, 3], [2, 1, 3]], "ranked_pairs")
    assert ranks == [1, 1, 2]
    assert confidence == pytest.approx([0.5, 0.5, 1.0])


def test_ranked_pairs_breaks_a_zero_margin_by_borda_when_items_differ_elsewhere():
    # A vs B = 0 and A vs C = 0, but B beats C 2-0, so A and B are distinguishable. Only B>C is locked;
    # the sources B (Borda 3) and A (Borda 4) are ordered by Borda, then A (4) before C (5) -> B, A, C.
    ranks, _ = consensus_ranking([[1, 2, 3], [3, 1, 2]], "ranked_pairs")
    assert ranks == [2, 1, 3]


@pytest.mark.parametrize("method", ["borda", "ranked_pairs"])
def test_consensus_of_one_labeler_is_that_labelers_ranking_with_full_confidence(method):
    ranks, confidence = consensus_ranking([[3, 1, 3, 2]], method)
    assert ranks == [3, 1, 3, 2]
    assert confidence == [1.0] * 4


@pytest.mark.parametrize("method", ["borda", "ranked_pairs"])
def test_consensus_ties_items_every_labeler_ties(method):
    ranks, confidence = consensus_ranking([[1, 1, 2], [2, 2, 1], [1, 1, 3]], method)
    assert ranks[0] == ranks[1]
    assert confidence[0] == confidence[1]


def test_consensus_of_a_single_item_has_full_confidence():
    assert consensus_ranking([[1], [1]], "ranked_pairs") == ([1], [1.0])


@pytest.mark.parametrize("seed", range(10))
def test_ranked_pairs_gives_dense_ranks_and_confidence_in_range(seed):
    ranks = _random_ranks(np.random.default_rng(seed)).tolist()
    consensus, confidence = consensus_ranking(ranks, "ranked_pairs")
    assert sorted(set(consensus)) == list(range(1, max(consensus) + 1))
    assert all(0.0 <= c <= 1.0 for c in confidence)


def test_consensus_rejects_no_labelers():
    with pytest.raises(ValueError, match="at least 1 labeler"):
        consensus_ranking([])


def test_consensus_rejects_no_items():
    with pytest.raises(ValueError, match="at least 1 item"):
        consensus_ranking([[], []])


def test_consensus_rejects_rows_of_different_lengths():
    with pytest.raises(ValueError, match="same items"):
        consensus_ranking([[1, 2], [1, 2, 3]], "ranked_pairs")


def test_consensus_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        consensus_ranking([[1, 2]], "kemeny")


@pytest.mark.parametrize("seed", range(10))
def test_borda_ranking_is_the_borda_consensus_without_its_confidence(seed):
    ranks = _random_ranks(np.random.default_rng(seed)).tolist()
    assert borda_ranking(ranks) == consensus_ranking(ranks)[0]
    assert borda_ranking([[3, 1, 4, 2], [2, 1, 4, 3]]) == [2, 1, 3, 2]  # rank sums 5, 2, 8, 5
    assert borda_ranking([[1, 2, 2, 3], [2, 1, 3, 3]]) == [1, 2, 3, 4]  # 1 + 2, 2.5 + 1, 2.5 + 3.5, 4 + 3.5
    with pytest.raises(ValueError, match="same items"):
        borda_ranking([[1, 2], [1, 2, 3]])


def test_average_ranks_are_floats_with_or_without_ties():
    assert average_ranks([3, 1, 4, 2]) == [3.0, 1.0, 4.0, 2.0]
    assert all(type(rank) is float for rank in average_ranks([3, 1, 4, 2]))
    assert average_ranks([1, 2, 2, 3]) == [1.0, 2.5, 2.5, 4.0]
    assert average_ranks([0.5, -1, 7.25]) == [2.0, 1.0, 3.0]
