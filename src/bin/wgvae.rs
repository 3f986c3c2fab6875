//! `wgvae` command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wgvae::Gpu;

#[derive(Parser)]
#[command(name = "wgvae", version, about = "Train variational autoencoders on any GPU with WGSL compute shaders")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the adapter, backend, device type, limits and features in use.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure matmul GFLOP/s of every kernel variant on the classic VAE's shapes.
    Bench {
        /// Only shapes whose name contains this (e.g. `square`, `784`).
        #[arg(long, default_value = "")]
        filter: String,
        /// Only this variant (`tiled` or `register`); default: all.
        #[arg(long)]
        variant: Option<String>,
        /// Seconds spent per (shape, variant).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info { json } => info(json),
        Cmd::Bench { filter, variant, seconds, json } => bench(&filter, variant.as_deref(), seconds, json),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info(json: bool) -> wgvae::Result<()> {
    let gpu = Gpu::new()?;
    let a = gpu.adapter();
    let l = gpu.limits();
    let limits = serde_json::json!({
        "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
        "max_buffer_size": l.max_buffer_size,
        "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
        "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
        "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
        "max_compute_workgroup_size_x": l.max_compute_workgroup_size_x,
        "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
        "min_uniform_buffer_offset_alignment": l.min_uniform_buffer_offset_alignment,
    });
    let features: Vec<String> = gpu.features().iter_names().map(|(n, _)| n.to_string()).collect();
    let v = serde_json::json!({
        "adapter": a.name,
        "backend": format!("{:?}", a.backend),
        "device_type": format!("{:?}", a.device_type),
        "driver": a.driver,
        "driver_info": a.driver_info,
        "vendor": format!("0x{:04x}", a.vendor),
        "device": format!("0x{:04x}", a.device),
        "matmul_variant": gpu.matmul_variant().name(),
        "features": features,
        "limits": limits,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!("adapter        {}", a.name);
        println!("backend        {:?}", a.backend);
        println!("device type    {:?}", a.device_type);
        println!("driver         {} {}", a.driver, a.driver_info);
        println!("matmul kernel  {}", gpu.matmul_variant().name());
        println!(
            "features       {}",
            if features.is_empty() { "(none beyond WebGPU core)".to_string() } else { features.join(", ") }
        );
        println!("limits");
        if let Some(obj) = limits.as_object() {
            for (k, val) in obj {
                println!("  {k:<40} {val}");
            }
        }
    }
    Ok(())
}

fn bench(filter: &str, variant: Option<&str>, seconds: f64, json: bool) -> wgvae::Result<()> {
    use wgvae::bench::{time_matmul, SHAPES};
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(wgvae::Error::InvalidArgument {
            name: "--seconds".into(),
            detail: format!("{seconds} is not a positive duration"),
        });
    }
    let variants = match variant {
        Some(v) => vec![wgvae::MatmulVariant::parse(v)?],
        None => wgvae::MatmulVariant::ALL.to_vec(),
    };
    let gpu = Gpu::new()?;
    let a = gpu.adapter();
    if !json {
        println!(
            "matmul on {} ({:?}, {:?}); default variant: {}",
            a.name,
            a.backend,
            a.device_type,
            gpu.matmul_variant().name()
        );
        print!("{:<18} {:>16} {:>6}", "shape", "MxKxN", "layout");
        for v in &variants {
            print!(" {:>12}", format!("{} GF/s", v.name()));
        }
        println!();
    }
    for s in SHAPES.iter().filter(|s| s.name.contains(filter)) {
        if !json {
            print!("{:<18} {:>16} {:>6}", s.name, format!("{}x{}x{}", s.m, s.k, s.n), s.layout());
        }
        for v in &variants {
            let r = time_matmul(&gpu, s, *v, std::time::Duration::from_secs_f64(seconds))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"adapter": a.name, "shape": s.name, "m": s.m, "k": s.k, "n": s.n,
                        "layout": s.layout(), "variant": v.name(), "seconds": r.seconds, "gflops": r.gflops})
                );
            } else {
                print!(" {:>12.2}", r.gflops);
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
        }
        if !json {
            println!();
        }
    }
    Ok(())
}
