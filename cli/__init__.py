"""zc-ctl, the operator's command line: parsing, the gRPC client and output."""
