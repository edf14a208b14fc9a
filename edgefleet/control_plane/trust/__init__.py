"""Trust: the signed TUF repository, its signing keys, and the certificate authority."""
