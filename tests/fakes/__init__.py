"""Local provider servers speaking each vendor's documented format over real HTTP on 127.0.0.1."""
