//! The cloud double as a standalone server, for benchmarks and manual runs:
//! `cloud-double --listen 127.0.0.1:9100`.

fn main() {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:9100".to_string();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect("--listen needs an address"),
            other => {
                eprintln!("usage: cloud-double [--listen ADDR]  (unknown argument {other:?})");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        eprintln!("cloud-double listening on {}", listener.local_addr().unwrap());
        switchyard_e2e::cloud_double::serve(listener, Default::default()).await;
    });
}
