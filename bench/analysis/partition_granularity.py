#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# bench/analysis/partition_granularity.py: bytes read per query at recall@10 = 0.9 against the
# partition granularity, simulated on the real data so that granularities too costly to build
# here (65 536 partitions of 1M) can be compared. Partitions: hierarchical k-means (1024 coarse
# clusters, 8 Lloyd rounds on all vectors, then 16 or 64 sub-clusters in each); queries rank
# all fine centroids exactly; a probed partition costs ceil((count x 95 + 208) / 4096) pages
# (95 B/vector: zstd'd u8 at ~60 vectors per block; 208 B: block header and per-dimension
# reference), as the file store pads blocks to 4 KiB. The 16 384-partition case reproduces the
# real index within 2.5% (79.4 against 81.4 KiB per query), which calibrates the model.
# "grouped" packs 4 neighbouring fine clusters (k-means of their centroids) into one block.
# Usage: partition_granularity.py DATA_DIR (base.u8bin, query.u8bin, gt100.bin). ~4 min on
# 2 cores for 1M x 128; ~3 GB of RAM.
import sys
import time

import numpy as np

D = sys.argv[1]
t0=time.time()
NQ=1000
b=np.fromfile(D + '/base.u8bin',dtype=np.uint8,offset=8).reshape(-1,128).astype(np.float32)
N=len(b)
q=np.fromfile(D + '/query.u8bin',dtype=np.uint8,offset=8).reshape(-1,128)[:NQ].astype(np.float32)
n,k=np.fromfile(D + '/gt100.bin',dtype='<i4',count=2)
gt=np.fromfile(D + '/gt100.bin',dtype='<i4',count=n*k,offset=8).reshape(n,k)[:NQ,:10]
def nn(x, c, k=1, bs=20000):
    cn=(c*c).sum(1); out=np.empty((len(x),k),np.int64)
    for i in range(0,len(x),bs):
        d=cn[None,:]-2*x[i:i+bs]@c.T
        if k==1: out[i:i+bs,0]=d.argmin(1)
        else:
            p=np.argpartition(d,k,axis=1)[:,:k]; dd=np.take_along_axis(d,p,1); o=np.argsort(dd,1); out[i:i+bs]=np.take_along_axis(p,o,1)
    return out
def kmeans(x,K,it=6,seed=1):
    rng=np.random.default_rng(seed); K=min(K,len(x)); c=x[rng.choice(len(x),K,replace=False)].copy()
    for _ in range(it):
        a=nn(x,c)[:,0]
        cnt=np.bincount(a,minlength=K); s=np.zeros_like(c); np.add.at(s,a,x)
        m=cnt>0; c[m]=s[m]/cnt[m,None]
    a=nn(x,c)[:,0]
    return c,a
K1=1024
c1,a1=kmeans(b,K1,it=8)
print('coarse',time.time()-t0,flush=True)
order=np.argsort(a1,kind='stable'); starts=np.searchsorted(a1[order],np.arange(K1+1))
fine={}
for sub in (16,64):
    cs=[];asg=np.empty(N,np.int64);base=0
    for j in range(K1):
        idx=order[starts[j]:starts[j+1]]
        c,a=kmeans(b[idx],sub,it=8,seed=j)
        cs.append(c); asg[idx]=a+base; base+=len(c)
    fine[sub]=(np.concatenate(cs),asg)
    print('fine',sub,base,time.time()-t0,flush=True)
BPV=95.0; HDR=80+128
def pages(cnt): return np.ceil((cnt*BPV+HDR)/4096)
def evaluate(name, ranks, cent2grp, vgroup, gsize, Ps=(2,3,4,5,6,8,10,12,14,16,20,24,32,40)):
    gp=pages(gsize)
    # per query: groups in order of first appearance
    glist=[]
    for i in range(NQ):
        g=cent2grp[ranks[i]]
        _,first=np.unique(g,return_index=True)
        glist.append(g[np.sort(first)])
    res=[]
    for P in Ps:
        rec=0; pg=0
        for i in range(NQ):
            g=glist[i][:P]; pg+=gp[g].sum(); rec+=np.isin(vgroup[gt[i]],g).sum()
        res.append((P,rec/NQ/10,pg/NQ*4))
    prev=None; at=None
    for P,r,kb in res:
        if r>=0.9 and prev is not None and at is None:
            at=prev[2]+(0.9-prev[1])/(r-prev[1])*(kb-prev[2])
        prev=(P,r,kb)
    print(name,'KiB@0.9=%.1f'%(at or -1),' '.join('%d:%.3f/%.0f'%x for x in res),flush=True)
c16,a16=fine[16]; K=len(c16)
r=nn(q,c16,64)
evaluate('flat16k',r,np.arange(K),a16,np.bincount(a16,minlength=K))
c64,a64=fine[64]; K=len(c64)
r=nn(q,c64,256)
evaluate('fine65k',r,np.arange(K),a64,np.bincount(a64,minlength=K))
# groups of 4 fine within each coarse: k-means of sub-centroids into 16 groups
grp=np.empty(K,np.int64); g0=0
for j in range(K1):
    sc=c64[j*64:(j+1)*64]
    _,ga=kmeans(sc,16,it=8,seed=j)
    grp[j*64:(j+1)*64]=ga+g0; g0+=16
vg=grp[a64]
evaluate('fine65k-grouped16k',r,grp,vg,np.bincount(vg,minlength=g0))
print(time.time()-t0)
