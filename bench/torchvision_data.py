"""CIFAR-10, SVHN and STL-10 through torchvision (placeholder; being written)."""
