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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info { json } => info(json),
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
        println!("features       {}", if features.is_empty() { "(none beyond WebGPU core)".to_string() } else { features.join(", ") });
        println!("limits");
        if let Some(obj) = limits.as_object() {
            for (k, val) in obj {
                println!("  {k:<40} {val}");
            }
        }
    }
    Ok(())
}
