"""The emulator family: the cWGAN-GP and flow loops, catalogs, the mini-Balrog, evaluation."""
