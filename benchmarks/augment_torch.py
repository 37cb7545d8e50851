# augment_torch.py: the incumbent for benchmarks/augment.js. The official MVEB/DINO augmentation
# (project/dataloader.py: DataAugmentationDINO with PIL GaussianBlur and Solarization, torchvision
# transforms, ToTensor + Normalize) on uint8 images, one process (as one DataLoader worker), stacked
# into one tensor per view. Prints JSON {name: images_per_second}.
# Run: /usr/bin/python3 benchmarks/augment_torch.py '<json list of {name, n, h, w, c, globalSize, localSize, locals, batch, repeats}>'
import json
import random
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms

torch.set_num_threads(1)


class GaussianBlur(object):
    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img):
        if random.random() <= self.prob:
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))
        return img


class Solarization(object):
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


def dino(global_size, local_size, locals_, mean, std):
    flip_and_color_jitter = transforms.Compose([
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomApply([transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ])
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    bic = transforms.InterpolationMode.BICUBIC
    g1 = transforms.Compose([transforms.RandomResizedCrop(global_size, scale=(0.4, 1.0), interpolation=bic),
                             flip_and_color_jitter, GaussianBlur(1.0), normalize])
    g2 = transforms.Compose([transforms.RandomResizedCrop(global_size, scale=(0.4, 1.0), interpolation=bic),
                             flip_and_color_jitter, GaussianBlur(0.1), Solarization(0.2), normalize])
    loc = transforms.Compose([transforms.RandomResizedCrop(local_size, scale=(0.05, 0.4), interpolation=bic),
                              flip_and_color_jitter, GaussianBlur(p=0.5), normalize])
    return lambda img: [g1(img), g2(img)] + [loc(img) for _ in range(locals_)]


def main():
    cases = json.loads(sys.argv[1])
    out = {}
    for cs in cases:
        rng = np.random.RandomState(0)
        c = cs['c']
        imgs = rng.randint(0, 256, size=(cs['n'], cs['h'], cs['w'], c)).astype(np.uint8)
        mode = 'L' if c == 1 else 'RGB'
        pils = [Image.fromarray(im[:, :, 0] if c == 1 else im, mode) for im in imgs]
        mean, std = ([0.5], [0.5]) if c == 1 else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        aug = dino(cs['globalSize'], cs['localSize'], cs['locals'], mean, std)
        B = cs['batch']

        def batch():
            idx = rng.randint(0, len(pils), size=B)
            views = [aug(pils[i]) for i in idx]
            return [torch.stack([v[k] for v in views]) for k in range(len(views[0]))]

        batch()  # warm-up
        t0 = time.perf_counter()
        for _ in range(cs['repeats']):
            batch()
        out[cs['name']] = B * cs['repeats'] / (time.perf_counter() - t0)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
