//! The tape and context contracts: one submission per step, no allocation on a repeated step,
//! typed errors instead of panics, determinism.

mod common;
use common::*;
use wgvae::nn::{Mlp, Sgd};
use wgvae::ops::{self, Act};
use wgvae::Optimizer;
use wgvae::{Error, Gpu, MatmulVariant, Tape, Tensor};

fn step(gpu: &Gpu, mlp: &Mlp, opt: &mut Sgd, x: &Tensor, t: &Tensor) -> f32 {
    let mut tape = Tape::new(gpu);
    let (xv, tv) = (tape.input(x.clone()), tape.input(t.clone()));
    let y = mlp.forward(&mut tape, xv).unwrap();
    let d = ops::sub(&mut tape, y, tv).unwrap();
    let sq = ops::mul(&mut tape, d, d).unwrap();
    let loss = ops::mean(&mut tape, sq).unwrap();
    tape.backward(loss).unwrap();
    opt.step(&mut tape, &mlp.params()).unwrap();
    let lv = tape.value(loss).clone();
    let rb = tape.read(&lv).unwrap();
    tape.submit().unwrap();
    rb.get().unwrap()[0]
}

#[test]
fn repeated_step_allocates_nothing_and_submits_once() {
    // A private device: the stats must not see other tests' work.
    let gpu = Gpu::new().unwrap();
    let mlp = Mlp::new(&gpu, "m", &[13, 33, 7], Act::Relu, Act::Sigmoid, 1).unwrap();
    let mut opt = Sgd::new(0.1).unwrap();
    let x = Tensor::from_slice(&gpu, 10, 13, &(0..130).map(|i| (i % 7) as f32 / 7.0).collect::<Vec<_>>()).unwrap();
    let t = Tensor::from_slice(&gpu, 10, 7, &(0..70).map(|i| (i % 2) as f32).collect::<Vec<_>>()).unwrap();
    step(&gpu, &mlp, &mut opt, &x, &t);
    let s1 = gpu.stats();
    step(&gpu, &mlp, &mut opt, &x, &t);
    let s2 = gpu.stats();
    assert_eq!(s2.buffers_created, s1.buffers_created, "second identical step created buffers");
    assert_eq!(s2.textures_created, s1.textures_created, "second identical step created operand textures");
    assert_eq!(s2.bind_groups_created, s1.bind_groups_created, "second identical step created bind groups");
    assert_eq!(s2.pipelines_compiled, s1.pipelines_compiled, "second identical step compiled pipelines");
    assert_eq!(s2.submissions, s1.submissions + 1, "forward, backward, update and read-back are one submission");
}

#[test]
fn same_seed_same_losses_bit_for_bit() {
    let run = || {
        let mlp = Mlp::new(gpu(), "m", &[6, 9, 2], Act::Elu(1.0), Act::Identity, 99).unwrap();
        let mut opt = Sgd::new(0.05).unwrap();
        let x = Mat::rand(5, 6, -1.0, 1.0, 1).upload();
        let t = Mat::rand(5, 2, -1.0, 1.0, 2).upload();
        (0..10).map(|_| step(gpu(), &mlp, &mut opt, &x, &t).to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn no_grad_tape_records_no_graph() {
    let mut tape = Tape::no_grad(gpu());
    let a = tape.leaf(Mat::rand(2, 3, -1.0, 1.0, 1).upload(), true);
    assert!(!tape.requires_grad(a));
    let s = ops::sum(&mut tape, a).unwrap();
    assert!(matches!(tape.backward(s), Err(Error::Autograd(_))));
    tape.submit().unwrap();
    assert!(tape.grad(a).is_none());
}

#[test]
fn backward_needs_a_differentiable_loss() {
    let mut tape = Tape::new(gpu());
    let a = tape.input(Mat::rand(2, 3, -1.0, 1.0, 1).upload());
    let s = ops::sum(&mut tape, a).unwrap();
    assert!(matches!(tape.backward(s), Err(Error::Autograd(_))));
}

#[test]
fn readback_before_submit_is_an_error() {
    let mut tape = Tape::no_grad(gpu());
    let t = Mat::rand(2, 2, 0.0, 1.0, 1).upload();
    let rb = tape.read(&t).unwrap();
    assert!(matches!(rb.get(), Err(Error::Autograd(_))));
}

#[test]
fn bad_shapes_are_typed_errors_not_panics() {
    let g = gpu();
    let mut tape = Tape::new(g);
    let a = tape.input(Mat::rand(3, 4, 0.0, 1.0, 1).upload());
    let b = tape.input(Mat::rand(5, 6, 0.0, 1.0, 2).upload());
    assert!(matches!(ops::matmul(&mut tape, a, b, false, false), Err(Error::Shape { op: "matmul", .. })));
    assert!(matches!(ops::add(&mut tape, a, b), Err(Error::Shape { .. })));
    assert!(matches!(ops::mul(&mut tape, a, b), Err(Error::Shape { .. })));
    let w = tape.input(Mat::rand(2, 4, 0.0, 1.0, 3).upload());
    let bad_bias = tape.input(Mat::rand(1, 3, 0.0, 1.0, 4).upload());
    assert!(matches!(ops::linear(&mut tape, a, w, Some(bad_bias), Act::Relu), Err(Error::Shape { .. })));
    assert!(matches!(Tensor::from_slice(g, 2, 2, &[1.0; 3]), Err(Error::Shape { .. })));
    assert!(matches!(Tensor::zeros(g, 0, 5), Err(Error::Shape { .. })));
    assert!(matches!(Tensor::empty(g, 3, 0), Err(Error::Shape { .. })));
    assert!(matches!(Mat::rand(2, 3, 0.0, 1.0, 1).upload().reshape(4, 2), Err(Error::Shape { .. })));
    // The messages name the shapes.
    let msg = ops::matmul(&mut tape, a, b, false, false).unwrap_err().to_string();
    assert!(msg.contains("[3, 4]") && msg.contains("[5, 6]"), "{msg}");
}

#[test]
fn bad_arguments_are_typed_errors() {
    assert!(matches!(Sgd::new(-1.0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(Sgd::new(f32::NAN), Err(Error::InvalidArgument { .. })));
    assert!(matches!("swish".parse::<Act>(), Err(Error::InvalidArgument { .. })));
    assert!(matches!("leaky_relu:-1".parse::<Act>(), Err(Error::InvalidArgument { .. })));
    assert_eq!("leaky_relu:0.2".parse::<Act>().unwrap(), Act::LeakyRelu(0.2));
    assert!(matches!("cuda".parse::<MatmulVariant>(), Err(Error::InvalidArgument { .. })));
    assert!(matches!(Mlp::new(gpu(), "m", &[4], Act::Relu, Act::Relu, 0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(Mlp::new(gpu(), "m", &[4, 0, 2], Act::Relu, Act::Relu, 0), Err(Error::InvalidArgument { .. })));
}

#[test]
fn too_large_tensor_is_a_device_limit_error() {
    let g = gpu();
    let max = g.max_tensor_elements() as usize;
    let err = Tensor::empty(g, 2, max / 2 + 64).unwrap_err();
    assert!(matches!(err, Error::DeviceLimit { .. }), "{err}");
}

#[test]
fn missing_adapter_is_a_typed_error_that_says_what_to_install() {
    let err =
        Gpu::with_options(wgvae::GpuOptions { adapter_name: Some("no-such-adapter-xyz".into()), ..Default::default() })
            .unwrap_err();
    assert!(matches!(err, Error::NoAdapter { .. }));
    let msg = err.to_string();
    assert!(msg.contains("mesa-vulkan-drivers") && msg.contains("no-such-adapter-xyz"), "{msg}");
}

/// A kernel whose module cannot compile: a define the matmul source needs is missing.
fn broken_key() -> wgvae::gpu::pipeline::KernelKey {
    use wgvae::gpu::pipeline::{KernelKey, Module};
    KernelKey {
        module: Module::Matmul,
        entry: "matmul_tiled",
        defines: vec![("TA", "true".into())],
        inputs: 3,
        outputs: 1,
    }
}

#[test]
fn broken_shader_is_a_typed_error_naming_the_kernel() {
    // Compilation must fail with the kernel's name.
    match gpu().kernel(&broken_key()) {
        Err(Error::Shader { kernel, message }) => {
            assert!(kernel.contains("matmul.wgsl:matmul_tiled"), "{kernel}");
            assert!(!message.is_empty());
        }
        Err(e) => panic!("expected a shader error, got {e}"),
        Ok(_) => panic!("a module with missing defines compiled"),
    }
}

#[test]
fn new_kernels_compile_together_once_and_at_submit() {
    use wgvae::gpu::pipeline::{KernelKey, Module};
    // A device of its own, so that no other test has compiled these kernels.
    quiet_drivers();
    let g = Gpu::new().unwrap();
    let leaky = |alpha: f32| KernelKey {
        module: Module::Elementwise,
        entry: "act_forward",
        defines: vec![("ACT", "2u".into()), ("ALPHA", format!("{alpha:?}f"))],
        inputs: 1,
        outputs: 1,
    };
    let compiled = || g.stats().pipelines_compiled;
    let before = compiled();
    // Four new kernels, each listed twice: compiled once each (on several threads natively).
    let keys: Vec<KernelKey> = [0.1, 0.2, 0.3, 0.4].into_iter().map(leaky).collect();
    let twice: Vec<&KernelKey> = keys.iter().chain(&keys).collect();
    g.prepare_kernels(&twice).unwrap();
    assert_eq!(compiled() - before, 4);
    g.prepare_kernels(&twice).unwrap();
    assert_eq!(compiled() - before, 4, "compiled kernels are not compiled again");
    // A broken kernel among new ones: its error names it, and the others are still compiled.
    let broken = broken_key();
    let more = [leaky(0.5), leaky(0.6)];
    match g.prepare_kernels(&[&more[0], &broken, &more[1]]) {
        Err(Error::Shader { kernel, .. }) => assert!(kernel.contains("matmul.wgsl:matmul_tiled"), "{kernel}"),
        other => panic!("expected the broken kernel's error, got {other:?}"),
    }
    assert_eq!(compiled() - before, 6);
    // A tape compiles a kernel new to the device when it submits, not when it records.
    let x = Tensor::from_slice(&g, 1, 4, &[-2.0, -0.5, 0.5, 2.0]).unwrap();
    let mut tape = Tape::no_grad(&g);
    let y = ops::elementwise::act_forward(&mut tape, &x, Act::LeakyRelu(0.25)).unwrap();
    assert_eq!(compiled() - before, 6, "recording compiles nothing");
    tape.submit().unwrap();
    assert_eq!(compiled() - before, 7);
    assert_eq!(y.to_vec(&g).unwrap(), vec![-0.5, -0.125, 0.5, 2.0]);
}

#[test]
fn backward_seed_is_shared_ones_that_no_kernel_may_write() {
    // Two backward passes on two tapes: neither dispatches a fill for its seed (the seed of
    // ones is uploaded once per shape and shared), and both get gradient 3·x of Σ x⊙(3·1).
    let x = Tensor::from_slice(gpu(), 2, 3, &[1.0, -2.0, 0.5, 4.0, 0.0, -1.5]).unwrap();
    let mut seeds = Vec::new();
    for round in 0..2 {
        let mut tape = Tape::new(gpu());
        let v = tape.leaf(x.clone(), true);
        let y = ops::scale(&mut tape, v, 3.0).unwrap();
        let l = ops::sum(&mut tape, y).unwrap();
        tape.backward(l).unwrap();
        let seed = tape.grad(l).unwrap().clone();
        assert!(tape.is_seed(&seed));
        let g = tape.grad(v).unwrap().clone();
        tape.submit().unwrap();
        assert_eq!(tape.kernels_run().get("fill"), None, "round {round}: {:?}", tape.kernels_run());
        assert_eq!(g.to_vec(gpu()).unwrap(), vec![3.0; 6], "round {round}");
        assert_eq!(seed.to_vec(gpu()).unwrap(), vec![1.0], "round {round}");
        seeds.push(seed);
    }
    assert!(seeds[0].same_storage(&seeds[1]), "the seed is uploaded once and shared");
    // A kernel that would write the seed is refused (it would corrupt every later backward).
    let mut tape = Tape::new(gpu());
    let v = tape.leaf(x.clone(), true);
    let l = ops::sum(&mut tape, v).unwrap();
    tape.backward(l).unwrap();
    let seed = tape.grad(l).unwrap().clone();
    let key = wgvae::gpu::pipeline::KernelKey {
        module: wgvae::gpu::pipeline::Module::Elementwise,
        entry: "fill",
        defines: vec![("ACT", "0u".into()), ("ALPHA", "0.0f".into())],
        inputs: 0,
        outputs: 1,
    };
    let p = wgvae::tape::Params::new().u(1).u(1).f(0.0).f(0.0);
    match tape.dispatch(&key, p, &[&seed], [1, 1, 1]) {
        Err(Error::Autograd(m)) => assert!(m.contains("backward seed"), "{m}"),
        other => panic!("a write to the seed was not refused: {other:?}"),
    }
}
