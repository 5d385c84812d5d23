//! Compiles the target triple into the agent: an update bundle must name the target it was built
//! for, and the running agent refuses one for another target before touching anything.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=VIGIL_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
