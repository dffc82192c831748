fn main() {
    eprintln!("eci: not implemented yet");
    std::process::exit(1);
}
