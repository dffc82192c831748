fn main() {
    eprintln!("eci-agent: not implemented yet");
    std::process::exit(1);
}
