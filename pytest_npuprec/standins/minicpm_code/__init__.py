"""Remote code for the MiniCPM stand-in: these files are copied into its checkpoint folder
(loaded there with ``trust_remote_code=True``) and imported from here to train it."""
