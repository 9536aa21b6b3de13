//! Builds cuda/kernels.cu one of two ways: with feature `cuda`, to a fatbin through nvcc (the
//! sidecar's kernels); without it, for the CPU through the emulator (the tests' kernels;
//! kept out of the CUDA build, which then needs no C++ runtime).
use std::{env, path::PathBuf, process::Command};

fn main() {
    for f in ["cuda/kernels.cu", "cuda/emu.h", "cuda/emulate.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .opt_level(2)
            .flag("-Wno-unknown-pragmas")
            .file("cuda/emulate.cpp")
            .compile("loralab_kernels_emu");
    } else {
        println!("cargo:rerun-if-env-changed=NVCC");
        println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
        let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
        let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("kernels.fatbin");
        // -arch=sm_XX: machine code for that GPU (nothing to JIT at load) and its PTX for newer ones
        let status = Command::new(&nvcc)
            .args(["--fatbin", &format!("-arch=sm_{cap}"), "-O3", "-std=c++17", "-o"])
            .arg(&out)
            .arg("cuda/kernels.cu")
            .status()
            .unwrap_or_else(|e| panic!("could not run {nvcc}: {e} (hint: scripts/build-cuda-sidecar.sh sets NVCC)"));
        assert!(status.success(), "{nvcc} failed on cuda/kernels.cu");
    }
}
