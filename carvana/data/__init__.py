"""The data stage: Kaggle files on disk -> checked names and paths -> tensors in the model's geometry.

    layout.py    find and check the Kaggle layout (CarvanaData, load_carvana_data)
    images.py    decode photos and masks with OpenCV/Pillow, fast, with one-line DataErrors
    split.py     train/validation split by car
    augment.py   joint image+mask augmentation
    cache.py     a run's photos and masks decoded once into a memory-mapped array
    workers.py   how loader workers and the cache's pool start
    datasets.py  torch datasets and DataLoaders

Import from the modules themselves (`from carvana.data.layout import load_carvana_data`): this
package imports none of them, so importing one module does not pull in torch and OpenCV.
"""
