fn main() {
    eprintln!("raftkv: not built yet");
    std::process::exit(2);
}
