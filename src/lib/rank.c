/*
 * rank.c - how many singular triplets of ΔW a reduction keeps, and the
 * error of keeping them, computed from the singular values alone
 * (Eckart–Young: the best rank-k approximation in Frobenius norm drops
 * exactly the tail, so ‖ΔW − ΔW_k‖²_F = Σ_{i>=k} σ_i²).
 *
 * Numerical contract: every sum is of σ_i² in double, in increasing i
 * (the tail sum too), so the results are reproducible bit for bit.
 */
#include "internal.h"

#include <math.h>

/* Σ_{i in [a, b)} S[i]², in increasing i. */
static double sumsq(const double *S, uint64_t a, uint64_t b)
{
    double t = 0.0;
    for (uint64_t i = a; i < b; i++)
        t += S[i] * S[i];
    return t;
}

uint64_t lora_rank_select(const double *S, uint64_t k, const lora_rank_rule *rule)
{
    if (k == 0)
        return 0;
    uint64_t keep = k;
    switch (rule->kind) {
    case LORA_RANK_FIXED:
        keep = rule->rank;
        break;
    case LORA_RANK_ENERGY: {
        double total = sumsq(S, 0, k);
        /* The slack lets F = 1 (and F exactly at a boundary) survive the
         * rounding of the partial sums; it is far below any F a user
         * would tell apart. */
        double want = rule->energy * total * (1.0 - 1e-12);
        double part = 0.0;
        keep = k;
        for (uint64_t i = 0; i < k; i++) {
            part += S[i] * S[i];
            if (part >= want) {
                keep = i + 1;
                break;
            }
        }
        break;
    }
    case LORA_RANK_RATIO:
        keep = 0;
        while (keep < k && S[keep] > 0.0 && S[keep] * rule->ratio >= S[0])
            keep++;
        break;
    }
    if (rule->max_rank && keep > rule->max_rank)
        keep = rule->max_rank;
    if (keep > k)
        keep = k;
    if (keep < 1)
        keep = 1;
    return keep;
}

double lora_rank_rel_error(const double *S, uint64_t k, uint64_t keep)
{
    if (keep > k)
        keep = k;
    double total = sumsq(S, 0, k);
    if (total == 0.0)
        return 0.0;
    return sqrt(sumsq(S, keep, k) / total);
}
