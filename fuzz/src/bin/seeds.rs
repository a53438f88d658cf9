//! Writes the hand-written seed inputs (`vswitch_fuzz::seeds`) into `<dir>/<target>/seed-<name>`
//! (default dir: `fuzz/corpus`).

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into());
    for (target, seeds) in vswitch_fuzz::seeds::all() {
        let d = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&d).expect("create the corpus directory");
        for (name, bytes) in seeds {
            let p = d.join(format!("seed-{name}"));
            std::fs::write(&p, bytes).expect("write a seed");
            println!("{}", p.display());
        }
    }
}
