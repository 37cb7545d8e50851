// train_step_profile.cpp: where the time of one ResNet training step goes, per op and per conv
// shape: a Backend decorator times every op the model calls on the CPU backend (zeroGrad + train
// forward + backward without input gradient + SGD step; the second step is reported), in process
// CPU time (all pool threads; on a shared machine, MVEB_NUM_THREADS=1 makes it the computing
// thread's own time) and wall time (with 2 threads, CPU / wall below 2 shows serial or idle time).
// Build against a core library from any build dir, then run:
//   cmake --build /tmp/build-x --target mveb_core
//   g++ -O2 -std=c++17 -Inative benchmarks/train_step_profile.cpp /tmp/build-x/libmveb_core.a -lpthread -o /tmp/tsprof
//   MVEB_NUM_THREADS=2 /tmp/tsprof 18 cifar 128 32      (depth stem batch size)
//   MVEB_NUM_THREADS=2 /tmp/tsprof 50 imagenet 16 224
//   MVEB_NUM_THREADS=2 /tmp/tsprof 18 cifar 512 28 0.125 1   (the default pretrain encoder: width, in channels)
// MVEB_STREAM_BYTES=N sets the CPU backend's stream_bytes (A/B of the non-temporal output stores);
// MVEB_MATMUL_PRECISION=high profiles the AMX bf16x3 path (read by the CPU backend itself).
// MVEB_PROFILE_SPLIT=1 shows the non-pointwise convolutions' backward as BN / data / weight parts.
// Every op the model calls must be forwarded by the decorator below (an op it lacks falls back to the
// Backend base class: batchnorm_conv_backward would then run as the separate ops, conv2d_forward_stats
// as a plain forward). The fused ops show as "bn+conv bwd" (a batch norm's backward with its conv's).
#include "core/model.h"
#include "cpu/cpu_backend.h"
#include "core/runtime.h"
#include "core/random.h"
#include <sys/resource.h>
#include <time.h>
#include <chrono>
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>
using namespace mveb;
using clk = std::chrono::steady_clock;
static long minflt(){ rusage u; getrusage(RUSAGE_SELF,&u); return u.ru_minflt; }
static double cpu_s(){ timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID,&t); return t.tv_sec+1e-9*t.tv_nsec; }
struct Acc { double cpu = 0, wall = 0, flop = 0; long faults = 0, calls = 0; };
// flop: the direct algorithm's multiply-adds x 2 of a convolution pass (0 for other ops), so the
// report can give GFLOP/s against wall time (Winograd passes do fewer real FLOPs than counted).
struct T { std::map<std::string,Acc>* m; std::string k; double flop=0; double t0=cpu_s(); clk::time_point w0=clk::now(); long f0=minflt();
  ~T(){ Acc& a=(*m)[k]; a.cpu+=cpu_s()-t0; a.wall+=std::chrono::duration<double>(clk::now()-w0).count(); a.faults+=minflt()-f0; a.calls+=1; a.flop+=flop; } };
static double conv_flop(const ConvShape& s){ return 2.0*s.N*s.P()*s.Q()*s.K*double(s.C)*s.R*s.S; }
class Prof : public Backend {
 public:
  Backend& b; std::map<std::string,Acc> m;
  explicit Prof(Backend& x):b(x){}
  // MVEB_PROFILE_SPLIT=1: for non-pointwise convolutions (where the CPU backend runs the composition
  // anyway) the composition runs on this decorator, so its BN backward, backward data and backward
  // weight show separately.
  const bool split = getenv("MVEB_PROFILE_SPLIT") != nullptr;
  Device device() const override { return b.device(); }
  std::string name() const override { return b.name(); }
  void* allocate(size_t n) override { return b.allocate(n); }
  void deallocate(void* p, size_t n) override { b.deallocate(p,n); }
  void upload(void* d, const void* s, size_t n) override { b.upload(d,s,n); }
  void download(void* d, const void* s, size_t n) override { b.download(d,s,n); }
  void copy(void* d, const void* s, size_t n) override { T t{&m,"copy"}; b.copy(d,s,n); }
  void fill(float* d, float v, size_t n) override { T t{&m,"fill"}; b.fill(d,v,n); }
  void synchronize() override {}
  void gemm(bool a,bool bb,int M,int N,int K,float al,const float* A,int lda,const float* B,int ldb,float be,float* C,int ldc) override { T t{&m,"gemm"}; b.gemm(a,bb,M,N,K,al,A,lda,B,ldb,be,C,ldc);}
  void nchw_to_nhwc(float* d,const float* s,int N,int C,int H,int W) override { T t{&m,"layout"}; b.nchw_to_nhwc(d,s,N,C,H,W);}
  void nhwc_to_nchw(float* d,const float* s,int N,int C,int H,int W) override { T t{&m,"layout"}; b.nhwc_to_nchw(d,s,N,C,H,W);}
  std::string ck(const char* w, const ConvShape& s){ char buf[128]; snprintf(buf,sizeof buf,"%s %dx%d/%d C%d K%d HW%d",w,s.R,s.S,s.stride,s.C,s.K,s.H); return buf; }
  void conv2d_forward(float* y,const float* x,const float* w,const ConvShape& s) override { T t{&m,ck("conv fwd ",s),conv_flop(s)}; T t2{&m,"conv fwd",conv_flop(s)}; b.conv2d_forward(y,x,w,s);}
  void conv2d_backward(float* dw,float* dx,const float* dy,const float* x,const float* w,const ConvShape& s,bool add) override {
    if (split && !(s.R == 1 && s.S == 1 && s.stride == 1)) { Backend::conv2d_backward(dw,dx,dy,x,w,s,add); return; }
    T t{&m,ck("conv bwd ",s),conv_flop(s)*((dw?1:0)+(dx?1:0))}; T t2{&m,"conv bwd",conv_flop(s)*((dw?1:0)+(dx?1:0))}; b.conv2d_backward(dw,dx,dy,x,w,s,add);}
  void batchnorm_conv_backward(float* dr,float* dg,float* db,const float* dy,const uint8_t* mk,const float* bx,const float* g,const float* mean,const float* is,bool relu,bool train,float* dw,float* dx,const float* x,const float* w,const ConvShape& s,bool add,float* scr) override {
    if (split && !(s.R == 1 && s.S == 1 && s.stride == 1)) { Backend::batchnorm_conv_backward(dr,dg,db,dy,mk,bx,g,mean,is,relu,train,dw,dx,x,w,s,add,scr); return; }
    T t{&m,ck("bn+conv bwd ",s),conv_flop(s)*((dw?1:0)+(dx?1:0))}; T t2{&m,"bn+conv bwd",conv_flop(s)*((dw?1:0)+(dx?1:0))}; b.batchnorm_conv_backward(dr,dg,db,dy,mk,bx,g,mean,is,relu,train,dw,dx,x,w,s,add,scr);}
  bool conv2d_forward_stats(float* y,double* st,const float* x,const float* w,const ConvShape& s) override { T t{&m,ck("conv fwd ",s),conv_flop(s)}; T t2{&m,"conv fwd",conv_flop(s)}; return b.conv2d_forward_stats(y,st,x,w,s);}
  void conv2d_backward_data(float* dx,const float* dy,const float* w,const ConvShape& s) override { T t{&m,ck("conv bwdD",s),conv_flop(s)}; T t2{&m,"conv bwd data",conv_flop(s)}; b.conv2d_backward_data(dx,dy,w,s);}
  void conv2d_backward_data_add(float* dx,const float* dy,const float* w,const ConvShape& s) override { T t{&m,ck("conv bwdD",s),conv_flop(s)}; T t2{&m,"conv bwd data",conv_flop(s)}; b.conv2d_backward_data_add(dx,dy,w,s);}
  void conv2d_backward_weight(float* dw,const float* dy,const float* x,const ConvShape& s) override { T t{&m,ck("conv bwdW",s),conv_flop(s)}; T t2{&m,"conv bwd weight",conv_flop(s)}; b.conv2d_backward_weight(dw,dy,x,s);}
  void batchnorm_forward_train(float* y,uint8_t* mk,float* sm,float* si,float* rm,float* rv,const float* x,const float* g,const float* be,const float* r,bool relu,int M,int C,float mo,float eps,const double* st) override { T t{&m,"bn fwd"}; b.batchnorm_forward_train(y,mk,sm,si,rm,rv,x,g,be,r,relu,M,C,mo,eps,st);}
  void batchnorm_forward_eval(float* y,uint8_t* mk,const float* x,const float* g,const float* be,const float* rm,const float* rv,const float* r,bool relu,int M,int C,float eps) override { T t{&m,"bn fwd eval"}; b.batchnorm_forward_eval(y,mk,x,g,be,rm,rv,r,relu,M,C,eps);}
  void add_bias_rows(float* y,const float* bias,int M,int N) override { T t{&m,"bias"}; b.add_bias_rows(y,bias,M,N);}
  void sum_rows(float* d,const float* dy,int M,int N) override { T t{&m,"bias"}; b.sum_rows(d,dy,M,N);}
  void lars_step(float* p,float* mb,const float* g,size_t n,float lr,float mo,float wd,float tr,bool ad) override { T t{&m,"lars"}; b.lars_step(p,mb,g,n,lr,mo,wd,tr,ad);}
  void ema_update(float* t_,const float* o,size_t n,float mm) override { T t{&m,"ema"}; b.ema_update(t_,o,n,mm);}
  void batchnorm_backward(float* dx,float* dr,float* dg,float* db,const float* dy,const uint8_t* mk,const float* x,const float* g,const float* mean,const float* is,bool relu,bool train,int M,int C) override { T t{&m,"bn bwd"}; b.batchnorm_backward(dx,dr,dg,db,dy,mk,x,g,mean,is,relu,train,M,C);}
  void axpy(float* y,float a,const float* x,size_t n) override { T t{&m,"axpy"}; b.axpy(y,a,x,n);}
  void maxpool2d_forward(float* y,int32_t* am,const float* x,const PoolShape& s) override { T t{&m,"pool"}; b.maxpool2d_forward(y,am,x,s);}
  void maxpool2d_backward(float* dx,const float* dy,const int32_t* am,const PoolShape& s) override { T t{&m,"pool"}; b.maxpool2d_backward(dx,dy,am,s);}
  void global_avgpool_forward(float* y,const float* x,int N,int HW,int C) override { T t{&m,"pool"}; b.global_avgpool_forward(y,x,N,HW,C);}
  void global_avgpool_backward(float* dx,const float* dy,int N,int HW,int C) override { T t{&m,"pool"}; b.global_avgpool_backward(dx,dy,N,HW,C);}
  void sgd_step(float* p,float* mb,const float* g,size_t n,float lr,float mo,float wd) override { T t{&m,"sgd"}; b.sgd_step(p,mb,g,n,lr,mo,wd);}
  bool all_finite(const float* x,size_t n) override { T t{&m,"all_finite"}; return b.all_finite(x,n);}
};
int main(int argc, char** argv){
  if (argc < 5) { fprintf(stderr, "usage: %s DEPTH cifar|imagenet BATCH SIZE [WIDTH [IN_CHANNELS]]\n", argv[0]); return 2; }
  Runtime rt; Prof p(rt.cpu());
  // MVEB_STREAM_BYTES: CpuBackend::stream_bytes (outputs at least this large are streamed past the caches)
  if (const char* sb = getenv("MVEB_STREAM_BYTES")) dynamic_cast<CpuBackend&>(rt.cpu()).stream_bytes = strtoull(sb, nullptr, 10);
  int depth = atoi(argv[1]); bool cifar = std::string(argv[2])=="cifar"; int N = atoi(argv[3]), S = atoi(argv[4]);
  ResnetConfig c; c.depth=depth; c.cifar_stem=cifar; c.zero_init_residual=true;
  if (argc > 5) c.width_multiplier = atof(argv[5]);
  if (argc > 6) c.in_channels = atoi(argv[6]);
  auto m = Model::resnet(p, c);
  Tensor x = empty_tensor(p, {N,c.in_channels,S,S}); for (int64_t i=0;i<x.numel();++i) x.f32()[i]=normal01(1,i);
  Tensor g = empty_tensor(p, {N,m->feature_dim()}); for (int64_t i=0;i<g.numel();++i) g.f32()[i]=normal01(2,i);
  OptimizerOptions o; o.lr=0.01f; o.weight_decay=1e-4f;
  for (int it=0; it<2; ++it){ if(it==1) p.m.clear(); auto t0=clk::now(); double c0=cpu_s(); long f0=minflt(); m->zero_grad(); m->forward(x,true); m->backward(g,false); m->optimizer_step(o);
    printf("step %.3f s wall, %.3f s CPU, %ld page faults\n", std::chrono::duration<double>(clk::now()-t0).count(), cpu_s()-c0, minflt()-f0); }
  std::vector<std::pair<double,std::string>> v; for(auto& kv: p.m) v.push_back({kv.second.cpu,kv.first});
  std::sort(v.rbegin(), v.rend());
  printf("     CPU s   wall s  faults calls GFLOP/s  op   (GFLOP/s: direct-algorithm FLOPs / wall)\n");
  for (size_t i=0;i<v.size() && i<400;++i) { const Acc& a=p.m[v[i].second]; char rate[16] = "      -"; if (a.flop > 0) snprintf(rate, sizeof rate, "%7.1f", a.flop / a.wall * 1e-9);
    printf("%8.3f %8.3f %7ld %5ld %s  %s\n", v[i].first, a.wall, a.faults, a.calls, rate, v[i].second.c_str()); }
}
