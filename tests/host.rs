//! wgvae as a guest in someone else's process: creating a `Gpu` leaves the process's stderr (fd 2)
//! and its environment exactly as they were. This file holds one test on purpose: other test
//! binaries quiet the drivers by setting environment variables, which would blur the check.

#[cfg(target_os = "linux")]
#[test]
fn creating_a_gpu_leaves_stderr_and_the_environment_alone() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let env_before: Vec<_> = std::env::vars_os().collect();
    let fd2 = || std::fs::read_link("/proc/self/fd/2").ok();
    let stderr_before = fd2();
    // Watch fd 2 from another thread for the whole of adapter probing and device creation: a
    // library that points it at /dev/null and back would be seen in between.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let want = stderr_before.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let now = std::fs::read_link("/proc/self/fd/2").ok();
                if now != want && !seen.contains(&now) {
                    seen.push(now);
                }
                std::thread::yield_now();
            }
            seen
        })
    };
    let gpu = wgvae::Gpu::new().expect("a GPU adapter (install mesa-vulkan-drivers)");
    let x = wgvae::Tensor::from_slice(&gpu, 2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    assert_eq!(x.to_vec(&gpu).unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    stop.store(true, Ordering::Relaxed);
    let changed = watcher.join().unwrap();
    assert!(changed.is_empty(), "fd 2 was {stderr_before:?}, and became {changed:?} while the Gpu was created");
    assert_eq!(fd2(), stderr_before);
    let env_after: Vec<_> = std::env::vars_os().collect();
    assert_eq!(env_before, env_after, "creating a Gpu changed the environment");
}
