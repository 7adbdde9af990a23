"""Models built from pyconv.nn layers: LeNet-5, DCGAN / conditional GAN, a convolutional VAE,
a gated PixelCNN, a character-level LSTM, SegNet, a DNA-motif CNN, and YOLO-style detection
post-processing."""
from .charlstm import CharLSTM
from .dcgan import DCGAN
from .detection import detect_postprocess
from .lenet import LeNet5
from .motif import MotifCNN
from .pixelcnn import PixelCNN
from .segnet import SegNet
from .vae import VAE

__all__ = ["LeNet5", "DCGAN", "VAE", "PixelCNN", "CharLSTM", "SegNet", "MotifCNN",
           "detect_postprocess"]
