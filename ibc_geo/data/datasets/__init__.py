"""Dataset formats, one module each; importing this package registers them all in DATASETS."""
from ibc_geo.data.datasets.base import DatasetFormat
from ibc_geo.data.datasets.cub import CUB
from ibc_geo.data.datasets.cars import Cars
from ibc_geo.data.datasets.sop import SOP
from ibc_geo.data.datasets.inshop import InShop
from ibc_geo.data.datasets.imagefolder import ImageFolder
from ibc_geo.data.datasets.digits import Digits, NoisyDigits

__all__ = ["DatasetFormat", "CUB", "Cars", "SOP", "InShop", "ImageFolder", "Digits", "NoisyDigits"]
