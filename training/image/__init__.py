"""The image family: the WGAN-GP/DCGAN loop, image data, augmentation and figures."""
