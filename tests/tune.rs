//! The tiled matmul in every tile the tuner may pick, against the f64 reference (on the CI adapter,
//! although a CPU adapter would never pick them); the tuner's choice, the plan's effect on which
//! kernel runs, and the plan cache.

mod common;
use common::*;
use std::time::Duration;
use wgvae::bench::MatmulShape;
use wgvae::ops::matmul::{matmul_accumulate, matmul_forward, matmul_fused, Epilogue, MatmulOpts};
use wgvae::ops::Act;
use wgvae::tune::{self, Measurement, PlanCache, PlanSource, TuneOptions};
use wgvae::{KernelChoice, MatmulPlan, MatmulVariant, Tape, TileConfig};

/// Asserts that the tiled kernel of `tile` ran on `tape` through `entry` (see
/// `expected_tile_kernel`) with the tile's defines.
fn assert_tile_ran(tape: &Tape, tile: TileConfig, entry: &str, what: &str) {
    let defines = format!("TILE_M={}u,TILE_N={}u,TILE_K={}u,PREFETCH={}", tile.m, tile.n, tile.k, tile.prefetch);
    let entry = format!("{entry}[");
    let ran = tape.kernel_names_run();
    assert!(
        ran.keys().any(|k| k.contains(&entry) && k.contains(&defines)),
        "{what}: expected {entry}..] with {defines}; ran {ran:?}"
    );
}

/// Asserts that split-K's second pass ran exactly when `tile` splits K and the product's K slices
/// (2048 deep at most) are at least two chunks of 128 (`TileConfig::MIN_SPLIT_K`) deep.
fn assert_split(tape: &Tape, tile: TileConfig, k: usize, what: &str) {
    let want = tile.split > 1 && k.min(2048) >= 256;
    let ran = tape.kernel_names_run().keys().any(|name| name.contains("matmul_split_reduce["));
    assert_eq!(ran, want, "{what}: split-K reduce pass ran: {ran}, expected {want}");
}

/// (M, K, N): ones, primes, one past the tiles (16, 32, 64, 128), a long K (three K slices); the
/// last three are multiples of 4 (vec4 staging runs on them), four past the tiles' sides.
const SIZES: [(usize, usize, usize); 9] = [
    (1, 1, 1),
    (7, 3, 5),
    (33, 17, 65),
    (129, 9, 17),
    (17, 40, 257),
    (130, 785, 33),
    (20, 6144, 36),
    (68, 28, 132),
    (132, 12, 68),
];

/// Every tile the tuner may pick, and the combinations of flags it does not measure (prefetch on a
/// strided tile, vec4 staging without prefetch, split-K on the strided and the scalar-staged
/// blocked entries, with an odd split) that a plan file or `MatmulOpts::tile` can still ask for.
fn tiles_to_prove() -> Vec<TileConfig> {
    let extra = [
        TileConfig::DEFAULT.prefetched(),
        TileConfig::blocked(64, 64, 16).vec4_staged(),
        TileConfig::new(32, 32, 16).split_k(3),
        TileConfig::blocked(64, 64, 16).split_k(2),
    ];
    TileConfig::ALL.into_iter().chain(extra).collect()
}

#[test]
fn tiled_matmul_every_tile_layout_and_odd_size() {
    for tile in tiles_to_prove() {
        for (i, &(m, k, n)) in SIZES.iter().enumerate() {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let seed = 500 + i as u64;
                let a = if ta { Mat::rand(k, m, -1.0, 1.0, seed) } else { Mat::rand(m, k, -1.0, 1.0, seed) };
                let b = if tb { Mat::rand(n, k, -1.0, 1.0, seed + 1) } else { Mat::rand(k, n, -1.0, 1.0, seed + 1) };
                let c0 = Mat::rand(m, n, -1.0, 1.0, seed + 2);
                let mut tape = Tape::no_grad(gpu());
                let o = MatmulOpts::nn().trans(ta, tb).tile(tile);
                let c = matmul_forward(&mut tape, &a.upload(), &b.upload(), None, o).unwrap();
                let acc = c0.upload();
                matmul_accumulate(&mut tape, &a.upload(), &b.upload(), &acc, o).unwrap();
                tape.submit().unwrap();
                let what = format!("tiled {tile} matmul {m}x{k}x{n} ta={ta} tb={tb}");
                assert_tile_ran(&tape, tile, expected_tile_kernel(tile, m, k, n, ta, tb), &what);
                assert_split(&tape, tile, k, &what);
                let want = matmul(&a, &b, ta, tb);
                let atol = 1e-6 * (k as f64).sqrt() * 4.0;
                assert_close(&download(&c), &want, atol, 1e-5, &what);
                assert_close(&download(&acc), &want.zip(&c0, |x, y| x + y), atol, 1e-5, &format!("{what} accumulate"));
            }
        }
    }
}

#[test]
fn tiled_matmul_every_tile_with_bias_activation_derivative_and_row_sums() {
    for tile in tiles_to_prove() {
        for (i, &(m, k, n)) in [(37, 29, 70), (130, 6144, 20), (68, 36, 132)].iter().enumerate() {
            let seed = 700 + i as u64;
            // Forward with bias and activation.
            let x = Mat::rand(m, k, -2.0, 2.0, seed);
            let w = Mat::rand(n, k, -1.0, 1.0, seed + 1);
            let bias = Mat::rand(1, n, -1.0, 1.0, seed + 2);
            let mut tape = Tape::no_grad(gpu());
            let o = MatmulOpts::nn().trans(false, true).act(Act::Tanh).tile(tile);
            let y = matmul_forward(&mut tape, &x.upload(), &w.upload(), Some(&bias.upload()), o).unwrap();
            // dW-shaped product with the activation derivative and the row sums (bias gradient).
            let act = Act::LeakyRelu(0.2);
            let g = Mat::rand(k, m, -1.0, 1.0, seed + 3);
            let pre = Mat::rand(m, n, -2.0, 2.0, seed + 4);
            let yact = pre.map(|v| act_fwd(act, v));
            let sums = wgvae::Tensor::empty(gpu(), 1, m).unwrap();
            let ep = Epilogue { grad_act: Some((act, yact.upload())), row_sums: Some(sums.clone()) };
            let b2 = Mat::rand(k, n, -1.0, 1.0, seed + 5);
            let o2 = MatmulOpts::nn().trans(true, false).tile(tile);
            let c = matmul_fused(&mut tape, &g.upload(), &b2.upload(), None, None, o2, ep).unwrap();
            tape.submit().unwrap();
            let what = format!("tiled {tile} {m}x{k}x{n}");
            // The row-sums product gᵀ·b2 (TN) decides the scalar or vec4 entry: its A needs M % 4.
            assert_tile_ran(&tape, tile, expected_tile_kernel(tile, m, k, n, true, false), &what);
            assert_split(&tape, tile, k, &what);
            let atol = 1e-6 * (k as f64).sqrt() * 4.0;
            let want_y = add_row(&matmul(&x, &w, false, true), &bias).map(|v| act_fwd(Act::Tanh, v));
            assert_close(&download(&y), &want_y, atol, 1e-5, &format!("{what}: bias + tanh"));
            let want_c = matmul(&g, &b2, true, false).zip(&pre, |p, v| p * act_grad(act, v));
            assert_close(&download(&c), &want_c, atol, 1e-5, &format!("{what}: activation derivative"));
            assert_close(&download(&sums), &row_sum(&g.t()).t(), atol, 1e-5, &format!("{what}: row sums"));
        }
    }
}

#[test]
fn tiles_the_kernel_cannot_run_are_refused() {
    let shared = gpu().limits().max_compute_workgroup_storage_size;
    for t in tiles_to_prove() {
        t.check(shared).unwrap_or_else(|e| panic!("{t} should run here: {e}"));
        // The name the tuner writes to the plan cache reads back as the same tile.
        assert_eq!(t.to_string().parse::<TileConfig>().unwrap(), t, "{t}");
        let k = KernelChoice::tiled(t);
        assert_eq!(k.to_string().parse::<KernelChoice>().unwrap(), k, "{k}");
    }
    assert_eq!("128x128x16bp".parse::<TileConfig>().unwrap(), TileConfig::blocked(128, 128, 16).prefetched());
    let full = TileConfig::blocked(128, 128, 8).prefetched().vec4_staged();
    assert_eq!("128x128x8bpv".parse::<TileConfig>().unwrap(), full);
    assert_eq!("128x128x8bpvs12".parse::<TileConfig>().unwrap(), full.split_k(12));
    // How split-K divides K: chunks are slab multiples of at least 128, shorter K is not split.
    let s4 = TileConfig::blocked(64, 64, 16).split_k(4);
    let any = usize::MAX;
    assert_eq!(s4.split_chunks(785, any), (208, 4));
    assert_eq!(s4.split_chunks(300, any), (128, 3));
    assert_eq!(s4.split_chunks(255, any), (255, 1));
    assert_eq!(s4.split_chunks(4096, any), (1024, 4));
    assert_eq!(TileConfig::new(32, 32, 16).split_k(16).split_chunks(4096, any), (256, 16));
    assert_eq!(TileConfig::DEFAULT.split_chunks(4096, any), (4096, 1));
    // Fewer parts where the partial sums would outgrow their memory budget; none below two.
    assert_eq!(TileConfig::new(32, 32, 16).split_k(16).split_chunks(4096, 5), (832, 5));
    assert_eq!(s4.split_chunks(4096, 1), (4096, 1));
    for bad in [
        "48x40x16",
        "0x64x16",
        "512x64x16",
        "16x16x8",
        "64x64",
        "32x32x16b",
        "64x64x16c",
        "64x64x16pb",
        "64x64x16v",
        "64x64x8bv",
        "64x64x16s0",
        "64x64x16bs17",
        "64x64x16bs",
        "64x64x16s4b",
    ] {
        let parsed = bad.parse::<TileConfig>();
        assert!(parsed.as_ref().map_or(true, |t| t.check(shared).is_err()), "{bad} must be refused: {parsed:?}");
    }
    let too_big = TileConfig::new(256, 256, 64);
    let e = too_big.check(shared).unwrap_err().to_string();
    assert!(e.contains("workgroup memory"), "{e}");
    let mut tape = Tape::no_grad(gpu());
    let a = Mat::rand(4, 4, -1.0, 1.0, 1).upload();
    assert!(matmul_forward(&mut tape, &a, &a, None, MatmulOpts::nn().tile(too_big)).is_err());
}

fn m(shape: &str, mm: usize, n: usize, kernel: KernelChoice, ms: f64) -> Measurement {
    mk(shape, mm, 8, n, kernel, ms)
}

fn mk(shape: &str, mm: usize, k: usize, n: usize, kernel: KernelChoice, ms: f64) -> Measurement {
    Measurement { shape: shape.into(), m: mm, k, n, layout: "NN".into(), kernel, ms, gflops: 1.0 }
}

#[test]
fn plan_picks_the_fastest_total_per_size_class() {
    let small = KernelChoice::tiled(TileConfig::new(32, 32, 16));
    let big = KernelChoice::tiled(TileConfig::new(128, 128, 8));
    let reg = KernelChoice::of(MatmulVariant::Register);
    let cands = [small, big, reg];
    // Class 0 (< 100 outputs): small wins in total although big wins one product.
    // Class 1 (< 10000): nothing measured, takes class 0's choice. Class 2: big wins.
    let ms = [
        m("a", 5, 5, small, 1.0),
        m("a", 5, 5, big, 0.9),
        m("a", 5, 5, reg, 3.0),
        m("b", 9, 9, small, 1.0),
        m("b", 9, 9, big, 2.0),
        m("b", 9, 9, reg, 3.0),
        m("c", 1000, 1000, small, 9.0),
        m("c", 1000, 1000, big, 4.0),
        m("c", 1000, 1000, reg, 4.0),
    ];
    let deep = tune::DEEP_K as usize;
    let plan = tune::plan_from(&[100, 10_000], tune::DEEP_K, &cands, &ms).unwrap();
    assert_eq!(plan.rules.len(), 2, "{plan}");
    assert_eq!((plan.rules[0].below, plan.rules[0].kernel), (Some(10_000), small), "{plan}");
    assert_eq!((plan.rules[1].below, plan.rules[1].kernel), (None, big), "ties go to the earlier candidate: {plan}");
    assert_eq!(plan.choose(9, 8, 9), Some(small));
    assert_eq!(plan.choose(99, deep, 101), Some(small));
    assert_eq!(plan.choose(100, 8, 100), Some(big));
    // Only the largest class measured: every class takes it.
    let only = tune::plan_from(&[100, 10_000], tune::DEEP_K, &cands, &ms[6..]).unwrap();
    assert_eq!(only.rules.len(), 1);
    assert_eq!(only.choose(1, 1, 1), Some(big));
    assert!(tune::plan_from(&[100], tune::DEEP_K, &cands, &[]).is_err());

    // Deep products (K >= DEEP_K) get a rule of their own where their winner differs, placed
    // before their class's rule, which is then chosen on the shallow products alone: in class 0
    // `reg` wins the deep product although `small` would win the class in total.
    let split = KernelChoice::tiled(TileConfig::blocked(64, 64, 16).split_k(4));
    let cands = [small, big, reg, split];
    let mut ms = ms.to_vec();
    ms.retain(|m| m.kernel != reg || m.shape != "a");
    ms.extend([
        m("a", 5, 5, reg, 1.5),
        m("a", 5, 5, split, 5.0),
        m("b", 9, 9, split, 5.0),
        m("c", 1000, 1000, split, 5.0),
        mk("d", 4, deep, 4, small, 20.0),
        mk("d", 4, deep, 4, big, 20.0),
        mk("d", 4, deep, 4, reg, 19.0),
        mk("d", 4, deep, 4, split, 15.0),
        mk("e", 4, 4 * deep, 4, reg, 1.0),
        mk("e", 4, 4 * deep, 4, split, 6.0),
        mk("e", 4, 4 * deep, 4, small, 30.0),
        mk("e", 4, 4 * deep, 4, big, 30.0),
    ]);
    let plan = tune::plan_from(&[100, 10_000], tune::DEEP_K, &cands, &ms).unwrap();
    assert_eq!(plan.rules.len(), 3, "{plan}");
    assert_eq!((plan.rules[0].below, plan.rules[0].min_k, plan.rules[0].kernel), (Some(100), Some(tune::DEEP_K), reg));
    assert_eq!((plan.rules[1].below, plan.rules[1].min_k, plan.rules[1].kernel), (Some(10_000), None, small), "{plan}");
    assert_eq!((plan.rules[2].below, plan.rules[2].min_k, plan.rules[2].kernel), (None, None, big), "{plan}");
    assert_eq!(plan.choose(4, deep, 4), Some(reg));
    assert_eq!(plan.choose(4, deep - 1, 4), Some(small));
    // A deep product of a larger class is not caught by the smaller class's deep rule.
    assert_eq!(plan.choose(99, deep, 101), Some(small));
    assert_eq!(plan.choose(1000, 8 * deep, 1000), Some(big));
    assert!(plan.to_string().contains("register below 100 outputs with K >= 1024"), "{plan}");
}

#[test]
fn search_measures_every_candidate_and_the_installed_plan_decides_which_kernel_runs() {
    // A device of its own: installing a plan must not change the other tests' kernels.
    let g = wgvae::Gpu::new().unwrap();
    track(&g);
    let tile = TileConfig::new(32, 32, 16);
    let mut cands = vec![KernelChoice::tiled(tile), KernelChoice::of(MatmulVariant::Register)];
    if g.check_variant(MatmulVariant::Subgroup).is_ok() {
        cands.push(KernelChoice::of(MatmulVariant::Subgroup));
    }
    let o = TuneOptions {
        candidates: cands.clone(),
        shapes: vec![
            MatmulShape { name: "small", m: 24, k: 40, n: 36, ta: false, tb: true },
            MatmulShape { name: "large", m: 96, k: 64, n: 80, ta: true, tb: false },
        ],
        classes: vec![2000],
        deep_k: tune::DEEP_K,
        seconds: Duration::from_millis(5),
    };
    let mut seen = 0;
    let report = tune::search(&g, &o, &mut |p| {
        if let tune::TuneProgress::Measured(_) = p {
            seen += 1
        }
    })
    .unwrap();
    assert_eq!(seen, 2 * cands.len());
    assert_eq!(report.measurements.len(), 2 * cands.len());
    assert!(report.measurements.iter().all(|m| m.ms > 0.0 && m.gflops > 0.0));
    assert_eq!(report.plan, tune::plan_from(&o.classes, o.deep_k, &cands, &report.measurements).unwrap());
    assert_eq!(report.adapter, tune::adapter_key(&g));

    // A plan that sends small products to the tiled kernel and large ones to `register`.
    let plan = MatmulPlan {
        rules: vec![
            wgvae::gpu::PlanRule::new(Some(2000), KernelChoice::tiled(tile)),
            wgvae::gpu::PlanRule::new(None, KernelChoice::of(MatmulVariant::Register)),
        ],
    };
    g.set_matmul_plan(Some(plan.clone())).unwrap();
    assert!(g.report().matmul_variant.starts_with("tuned: tiled 32x32x16 below 2000"), "{}", g.report().matmul_variant);
    let (a, b) = (Mat::rand(24, 40, -1.0, 1.0, 1), Mat::rand(40, 36, -1.0, 1.0, 2));
    let (a2, b2) = (Mat::rand(50, 41, -1.0, 1.0, 3), Mat::rand(41, 45, -1.0, 1.0, 4));
    let mut tape = Tape::no_grad(&g);
    let c = matmul_forward(&mut tape, &a.upload_to(&g), &b.upload_to(&g), None, MatmulOpts::nn()).unwrap();
    tape.submit().unwrap();
    assert_tile_ran(
        &tape,
        tile,
        expected_tile_kernel(tile, 24, 40, 36, false, false),
        "a small product under the plan",
    );
    assert_close(&download(&c), &matmul(&a, &b, false, false), 1e-5, 1e-5, "small product under the plan");
    let mut tape = Tape::no_grad(&g);
    let c2 = matmul_forward(&mut tape, &a2.upload_to(&g), &b2.upload_to(&g), None, MatmulOpts::nn()).unwrap();
    tape.submit().unwrap();
    assert_ran(&tape, "matmul_register", "a large product under the plan");
    assert!(!tape.kernels_run().contains_key("matmul_tiled"));
    assert_close(&download(&c2), &matmul(&a2, &b2, false, false), 1e-5, 1e-5, "large product under the plan");
    // A forced variant still wins over the plan.
    let mut tape = Tape::no_grad(&g);
    let o = MatmulOpts::nn().variant(MatmulVariant::Register);
    matmul_forward(&mut tape, &a.upload_to(&g), &b.upload_to(&g), None, o).unwrap();
    tape.submit().unwrap();
    assert!(!tape.kernels_run().contains_key("matmul_tiled"), "{:?}", tape.kernels_run());
    // Plans must cover every size and name kernels the adapter runs.
    let open = MatmulPlan { rules: vec![wgvae::gpu::PlanRule::new(Some(10), KernelChoice::tiled(tile))] };
    assert!(g.set_matmul_plan(Some(open)).is_err());
    let deep_only = wgvae::gpu::PlanRule { below: None, min_k: Some(64), kernel: KernelChoice::tiled(tile) };
    assert!(g.set_matmul_plan(Some(MatmulPlan { rules: vec![deep_only] })).is_err());
    g.set_matmul_plan(None).unwrap();
    assert!(g.matmul_plan().is_none());
}

#[test]
fn plan_cache_round_trip_keys_and_errors() {
    let g = gpu();
    let dir = std::env::temp_dir().join(format!("wgvae-plan-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("sub").join("matmul-plans.json");
    let mut cache = PlanCache::open(&path).unwrap();
    assert!(cache.get(g).is_none());
    let plan =
        MatmulPlan { rules: vec![wgvae::gpu::PlanRule::new(None, KernelChoice::tiled(TileConfig::new(64, 128, 16)))] };
    let report = tune::TuneReport {
        adapter: tune::adapter_key(g),
        kernels: tune::kernels_key(),
        wgvae: "test".into(),
        plan: plan.clone(),
        measurements: vec![m("x", 3, 4, plan.rules[0].kernel, 0.5)],
    };
    let other = tune::TuneReport { adapter: "another adapter".into(), ..report.clone() };
    let stale = tune::TuneReport { kernels: "0000000000000000".into(), ..report.clone() };
    cache.put(other.clone());
    cache.put(stale);
    cache.save().unwrap();
    // A plan measured with other kernels does not apply.
    let reread = PlanCache::open(&path).unwrap();
    assert!(reread.get(g).is_none());
    let src = tune::use_plan(g, &path, false, &mut |_| {}).unwrap();
    assert_eq!(src, PlanSource::Default);
    // A new measurement replaces the stale one and keeps the other adapter's.
    let mut cache = reread;
    cache.put(report.clone());
    cache.save().unwrap();
    let reread = PlanCache::open(&path).unwrap();
    assert_eq!(reread.get(g), Some(&report));
    assert_eq!(reread.reports().len(), 2);
    assert!(reread.reports().contains(&other));
    // use_plan installs it (on a device of its own, not the shared one).
    let g2 = wgvae::Gpu::new().unwrap();
    assert_eq!(tune::use_plan(&g2, &path, false, &mut |_| {}).unwrap(), PlanSource::Cached(path.clone()));
    assert_eq!(g2.matmul_plan().as_deref(), Some(&plan));
    // A damaged file is an error that names it.
    std::fs::write(&path, "{ not json").unwrap();
    let e = PlanCache::open(&path).unwrap_err().to_string();
    assert!(e.contains("matmul-plans.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn use_plan_measures_a_missing_plan_once_then_reads_it_back() {
    let dir = std::env::temp_dir().join(format!("wgvae-use-plan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("matmul-plans.json");
    let g = wgvae::Gpu::new().unwrap();
    let mut started = 0;
    let src = tune::use_plan(&g, &path, true, &mut |p| {
        if let tune::TuneProgress::Starting { .. } = p {
            started += 1
        }
    })
    .unwrap();
    assert_eq!((src, started), (PlanSource::Measured(path.clone()), 1));
    let cached = PlanCache::open(&path).unwrap().get(&g).cloned().expect("the plan was saved");
    assert_eq!(g.matmul_plan().as_deref(), Some(&cached.plan));
    let o = TuneOptions::for_gpu(&g, false);
    assert_eq!(cached.measurements.len(), o.candidates.len() * o.shapes.len());
    let g2 = wgvae::Gpu::new().unwrap();
    let src = tune::use_plan(&g2, &path, true, &mut |_| panic!("a cached plan is not measured again")).unwrap();
    assert_eq!(src, PlanSource::Cached(path.clone()));
    assert_eq!(g2.matmul_plan(), g.matmul_plan());
    // A cache that cannot be written (its directory is a file): the measured plan still runs.
    let blocked = dir.join("not-a-dir");
    std::fs::write(&blocked, "").unwrap();
    let g3 = wgvae::Gpu::new().unwrap();
    let src = tune::use_plan(&g3, &blocked.join("matmul-plans.json"), true, &mut |_| {}).unwrap();
    assert!(matches!(src, PlanSource::Unsaved(_)), "{src:?}");
    assert!(g3.matmul_plan().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
