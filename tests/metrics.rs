//! The latent-space metrics: active units, KL per dimension and the Mutual Information Gap, on
//! synthetic latents whose answers are known.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgvae::vae::metrics::*;
use wgvae::Error;

fn is_invalid(r: Result<impl std::fmt::Debug, Error>, name: &str) {
    match r {
        Err(Error::InvalidArgument { name: got, .. }) => assert_eq!(got, name),
        other => panic!("expected InvalidArgument `{name}`, got {other:?}"),
    }
}

/// n examples of independent uniform factors with the given sizes.
fn random_factors(rng: &mut StdRng, n: usize, sizes: &[usize]) -> Vec<Vec<u8>> {
    (0..n).map(|_| sizes.iter().map(|&s| rng.random_range(0..s) as u8).collect()).collect()
}

/// Row-major [n, z] from per-example rows.
fn flatten(rows: &[Vec<f32>]) -> Vec<f32> {
    rows.iter().flatten().copied().collect()
}

#[test]
fn active_units_counts_varying_columns() {
    // Columns: constant, tiny variance, ±0.5 around 0 (variance exactly 0.25), ±0.5 around 1e4
    // (variance exactly 0.25, needs a stable algorithm), large variance.
    let n = 6;
    let rows: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            let s = if i % 2 == 0 { 0.5 } else { -0.5 };
            vec![3.0, 1e-3 * s, s, 1e4 + s, 10.0 * i as f32]
        })
        .collect();
    let mu = flatten(&rows);
    let au = active_units(&mu, n, 5, 0.01).unwrap();
    assert_eq!(au.variances.len(), 5);
    assert_eq!(au.variances[0], 0.0);
    assert!((au.variances[1] - 0.25e-6).abs() < 1e-12, "{}", au.variances[1]);
    assert_eq!(au.variances[2], 0.25);
    assert_eq!(au.variances[3], 0.25);
    // 10·i for i in 0..6: mean 25, population variance 100·35/12.
    assert!((au.variances[4] - 100.0 * 35.0 / 12.0).abs() < 1e-9);
    assert_eq!(au.count, 3);

    // The threshold is strict: a variance equal to it is not active.
    assert_eq!(active_units(&mu, n, 5, 0.25).unwrap().count, 1);
    assert_eq!(active_units(&mu, n, 5, 0.2499).unwrap().count, 3);
    assert_eq!(active_units(&mu, n, 5, 0.0).unwrap().count, 4);
    // A single example has no variance.
    assert_eq!(active_units(&mu[..5], 1, 5, 0.0).unwrap().count, 0);
}

#[test]
fn kl_per_dim_matches_hand_computation() {
    let ln2 = 2f32.ln();
    let mu = [0.0f32, 1.0, 2.0, -1.0];
    let logvar = [0.0f32, ln2, 1.0, 0.0];
    let kl = kl_per_dim(&mu, &logvar, 2, 2).unwrap();
    // dim 0: 0 and ½(4 + e − 1 − 1); dim 1: ½(1 + 2 − 1 − ln 2) and ½(1 + 1 − 1 − 0).
    let e = std::f64::consts::E;
    let want0 = (0.0 + 0.5 * (2.0 + e)) / 2.0;
    let want1 = (0.5 * (2.0 - ln2 as f64) + 0.5) / 2.0;
    assert_eq!(kl.len(), 2);
    assert!((kl[0] - want0).abs() < 1e-6, "{} vs {want0}", kl[0]);
    assert!((kl[1] - want1).abs() < 1e-6, "{} vs {want1}", kl[1]);
    // The prior itself has zero KL.
    assert_eq!(kl_per_dim(&[0.0; 6], &[0.0; 6], 3, 2).unwrap(), vec![0.0, 0.0]);
}

#[test]
fn mig_near_one_when_each_latent_copies_one_factor() {
    let mut rng = StdRng::seed_from_u64(7);
    let sizes = [3usize, 4, 5];
    let n = 5000;
    let factors = random_factors(&mut rng, n, &sizes);
    // Latents: factor 2 (scaled), two noise dims, factor 0, factor 1 (negated, offset).
    let rows: Vec<Vec<f32>> = factors
        .iter()
        .map(|f| {
            vec![
                0.3 * f[2] as f32,
                rng.random::<f32>(),
                rng.random_range(-2.0..2.0),
                f[0] as f32,
                5.0 - 2.0 * f[1] as f32,
            ]
        })
        .collect();
    let m = mutual_information_gap(&flatten(&rows), n, 5, &factors, &sizes, 20).unwrap();
    assert!(m.mig > 0.95, "{m:?}");
    assert_eq!(m.per_factor.len(), 3);
    assert_eq!(m.mutual_information.len(), 3);
    assert!(m.mutual_information.iter().all(|r| r.len() == 5));
    for (k, &size) in sizes.iter().enumerate() {
        assert!(m.per_factor[k] > 0.95, "{m:?}");
        // Near-uniform factors: H ≈ ln(size).
        assert!((m.factor_entropy[k] - (size as f64).ln()).abs() < 0.01, "{m:?}");
    }
    // The copying latent recovers the whole entropy.
    assert!((m.mutual_information[0][3] - m.factor_entropy[0]).abs() < 1e-9);
    assert!((m.mutual_information[1][4] - m.factor_entropy[1]).abs() < 1e-9);
    assert!((m.mutual_information[2][0] - m.factor_entropy[2]).abs() < 1e-9);
}

#[test]
fn mig_near_zero_for_independent_latents() {
    let mut rng = StdRng::seed_from_u64(11);
    let sizes = [3usize, 6, 40];
    let n = 5000;
    let z = 6;
    let factors = random_factors(&mut rng, n, &sizes);
    let codes: Vec<f32> = (0..n * z).map(|_| rng.random_range(-1.0..1.0)).collect();
    let m = mutual_information_gap(&codes, n, z, &factors, &sizes, 20).unwrap();
    assert!(m.mig < 0.05, "{m:?}");
    assert!(m.mutual_information.iter().flatten().all(|&i| (0.0..0.2).contains(&i)), "{m:?}");
}

#[test]
fn mig_zero_gap_when_two_latents_copy_the_same_factor() {
    let mut rng = StdRng::seed_from_u64(3);
    let sizes = [5usize, 4];
    let n = 5000;
    let factors = random_factors(&mut rng, n, &sizes);
    let rows: Vec<Vec<f32>> =
        factors.iter().map(|f| vec![f[0] as f32, -3.0 * f[0] as f32 + 1.0, f[1] as f32]).collect();
    let m = mutual_information_gap(&flatten(&rows), n, 3, &factors, &sizes, 20).unwrap();
    assert!(m.per_factor[0].abs() < 1e-12, "{m:?}");
    assert!(m.per_factor[1] > 0.95, "{m:?}");
    assert!((m.mig - 0.5 * m.per_factor[1]).abs() < 1e-12);

    // With only the duplicated factor, MIG itself is ~0.
    let only: Vec<Vec<u8>> = factors.iter().map(|f| vec![f[0]]).collect();
    let m = mutual_information_gap(&flatten(&rows), n, 3, &only, &sizes[..1], 20).unwrap();
    assert!(m.mig.abs() < 1e-12, "{m:?}");
}

#[test]
fn mig_with_one_latent_is_mi_over_entropy() {
    let mut rng = StdRng::seed_from_u64(5);
    let sizes = [4usize];
    let n = 2000;
    let factors = random_factors(&mut rng, n, &sizes);
    let codes: Vec<f32> = factors.iter().map(|f| f[0] as f32).collect();
    let m = mutual_information_gap(&codes, n, 1, &factors, &sizes, 10).unwrap();
    assert!((m.mig - 1.0).abs() < 1e-12, "{m:?}");
    // A constant latent carries no information.
    let m = mutual_information_gap(&vec![0.5; n], n, 1, &factors, &sizes, 10).unwrap();
    assert_eq!(m.mig, 0.0);
}

#[test]
fn mig_invariant_to_latent_permutation() {
    let mut rng = StdRng::seed_from_u64(19);
    let sizes = [3usize, 5, 2];
    let n = 3000;
    let z = 4;
    let factors = random_factors(&mut rng, n, &sizes);
    // Noisy copies so that the metric is neither 0 nor 1.
    let rows: Vec<Vec<f32>> = factors
        .iter()
        .map(|f| {
            vec![
                f[0] as f32 + rng.random_range(-0.8..0.8),
                f[1] as f32 + rng.random_range(-1.5..1.5),
                f[0] as f32 + rng.random_range(-2.0..2.0),
                f[2] as f32 + rng.random_range(-0.3..0.3),
            ]
        })
        .collect();
    let perm = [2usize, 0, 3, 1];
    let permuted: Vec<Vec<f32>> = rows.iter().map(|r| perm.iter().map(|&p| r[p]).collect()).collect();
    let a = mutual_information_gap(&flatten(&rows), n, z, &factors, &sizes, 20).unwrap();
    let b = mutual_information_gap(&flatten(&permuted), n, z, &factors, &sizes, 20).unwrap();
    assert!(a.mig > 0.05 && a.mig < 0.95, "{a:?}");
    assert!((a.mig - b.mig).abs() < 1e-12);
    for k in 0..sizes.len() {
        assert!((a.per_factor[k] - b.per_factor[k]).abs() < 1e-12);
        for (j, &p) in perm.iter().enumerate() {
            assert!((b.mutual_information[k][j] - a.mutual_information[k][p]).abs() < 1e-12);
        }
    }
    assert_eq!(a.factor_entropy, b.factor_entropy);
}

#[test]
fn mig_excludes_single_valued_factor() {
    let mut rng = StdRng::seed_from_u64(23);
    let n = 4000;
    let two = random_factors(&mut rng, n, &[4, 3]);
    // Half-noisy latents so the two per-factor gaps differ.
    let rows: Vec<Vec<f32>> =
        two.iter().map(|f| vec![f[0] as f32 + rng.random_range(-0.7..0.7), f[1] as f32, rng.random()]).collect();
    let codes = flatten(&rows);
    let base = mutual_information_gap(&codes, n, 3, &two, &[4, 3], 20).unwrap();
    // Insert a factor that is always 2 (of 6 possible values) in the middle.
    let three: Vec<Vec<u8>> = two.iter().map(|f| vec![f[0], 2, f[1]]).collect();
    let m = mutual_information_gap(&codes, n, 3, &three, &[4, 6, 3], 20).unwrap();
    assert_eq!(m.factor_entropy[1], 0.0);
    assert_eq!(m.per_factor[1], 0.0);
    assert!(m.mutual_information[1].iter().all(|&i| i == 0.0));
    assert!((m.mig - base.mig).abs() < 1e-12, "{} vs {}", m.mig, base.mig);
    assert!((m.per_factor[0] - base.per_factor[0]).abs() < 1e-12);
    assert!((m.per_factor[2] - base.per_factor[1]).abs() < 1e-12);
    // Only single-valued factors: undefined.
    let constant: Vec<Vec<u8>> = (0..n).map(|_| vec![1]).collect();
    is_invalid(mutual_information_gap(&codes, n, 3, &constant, &[2], 20), "factors");
}

#[test]
fn error_cases() {
    // active_units / kl_per_dim
    is_invalid(active_units(&[0.0; 5], 2, 3, 0.01), "mu");
    is_invalid(active_units(&[], 0, 3, 0.01), "n");
    is_invalid(active_units(&[], 3, 0, 0.01), "z");
    is_invalid(active_units(&[0.0, f32::NAN], 1, 2, 0.01), "mu");
    is_invalid(active_units(&[0.0; 4], 2, 2, f64::NAN), "threshold");
    is_invalid(kl_per_dim(&[0.0; 4], &[0.0; 3], 2, 2), "logvar");
    is_invalid(kl_per_dim(&[0.0; 3], &[0.0; 4], 2, 2), "mu");
    is_invalid(kl_per_dim(&[], &[], 0, 2), "n");
    is_invalid(kl_per_dim(&[0.0; 2], &[f32::INFINITY, 0.0], 1, 2), "logvar");

    // mutual_information_gap
    let factors = vec![vec![0u8, 1], vec![1, 0], vec![2, 1]];
    let sizes = [3usize, 2];
    let codes = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    assert!(mutual_information_gap(&codes, 3, 2, &factors, &sizes, 4).is_ok());
    is_invalid(mutual_information_gap(&codes[..5], 3, 2, &factors, &sizes, 4), "codes");
    is_invalid(mutual_information_gap(&codes, 3, 2, &factors[..2], &sizes, 4), "factors");
    is_invalid(mutual_information_gap(&codes, 3, 2, &factors, &sizes, 0), "bins");
    is_invalid(mutual_information_gap(&[], 0, 2, &[], &sizes, 4), "n");
    is_invalid(mutual_information_gap(&codes, 3, 2, &factors, &[], 4), "factor_sizes");
    is_invalid(mutual_information_gap(&codes, 3, 2, &factors, &[3, 0], 4), "factor_sizes");
    // Factor value out of range: factor 0 has value 2 but size 2.
    is_invalid(mutual_information_gap(&codes, 3, 2, &factors, &[2, 2], 4), "factors");
    // Row of the wrong length.
    let short = vec![vec![0u8, 1], vec![1], vec![2, 1]];
    is_invalid(mutual_information_gap(&codes, 3, 2, &short, &sizes, 4), "factors");
    let mut nan = codes;
    nan[3] = f32::NAN;
    is_invalid(mutual_information_gap(&nan, 3, 2, &factors, &sizes, 4), "codes");
}
